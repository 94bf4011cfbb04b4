"""The throughput benchmark, short (`bench/throughput_bench.py`): the bare model, short threads and long
threads (given their history through the thread's storage) under load over HTTP. Time is the benchmark's
business; here what must hold at any size: every turn answered, and CPU read for every process group.

It runs as its own process with its own Ray cluster and stack, as a user would run the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_short_and_long_threads_are_answered_under_load(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    args = ["--users", "2", "--seconds", "2", "--history", "200", "--out", str(out)]
    proc = run_isolated("bench/throughput_bench.py", *args, cwd=tmp_path, timeout=280)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    phases = {phase["phase"]: phase for phase in json.loads(out.read_text())["phases"]}
    assert set(phases) == {"bare model", "serve echo", "short threads", "long threads"}
    for phase in phases.values():
        assert phase["turns"] > 0 and phase["errors"] == 0, phase
    assert phases["long threads"]["cpu_ms_per_turn"]["hosts"] > 0  # the hosts' processes were found
    assert proc.returncode == 0, proc.stdout[-3000:]
