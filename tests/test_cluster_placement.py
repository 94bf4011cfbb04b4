"""Issue 22: agent hosts spread over a cluster's nodes, not bunched on the node that started them: each host
reserves a core (`AGENT_HOST_CPUS=1`) and is placed with Ray's SPREAD strategy, so on a head and two
two-core worker nodes on this machine four hosts land on both workers, and agents answer from more than one
host process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_hosts_are_placed_on_more_than_one_node(tmp_path: Path) -> None:
    proc = run_isolated("tests/placement_scenario.py", str(tmp_path / "agents"), cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == 3 and seen["hosts"] == 4
    assert seen["cpus_reserved"] == 4  # each host holds the core it asked for
    assert len(seen["host_nodes"]) == 2, seen  # both workers (the head offers no core)
    assert seen["agent_processes"] >= 2, seen
