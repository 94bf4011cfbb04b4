"""The product's metrics on Ray's own metrics endpoint (Prometheus text, `ray_` prefix) after one purchase
approved and one denied, with the right counts. The scenario runs in a process of its own with its own Ray
(`tests/metrics_scenario.py`), so nothing else adds to the counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_an_approved_and_a_denied_purchase_show_on_rays_metrics_endpoint(tmp_path: Path) -> None:
    proc = run_isolated("tests/metrics_scenario.py", str(tmp_path / "agents"), cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (seen["approved"], seen["denied"], seen["errors"]) == (1, 1, 0), seen
    assert seen["polls"] >= 2 and seen["polls_per_approval_count"] == 1, seen
    assert seen["approval_to_resume_count"] == 1, seen
    assert seen["turns_ok"] >= 2 and seen["turn_seconds_count"] == seen["turns_ok"], seen
    assert seen["model_calls"] >= 4 and seen["activations"] == 1, seen
    assert seen["schedule_runs_ok"] >= 2, seen  # each purchase's check ran as a schedule
    for gauge in ("ray_agentrt_live_agents", "ray_agentrt_due_alarms", "ray_agentrt_agents_on_file"):
        assert gauge in seen["names"], seen["names"]
