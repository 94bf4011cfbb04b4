"""The waiting benchmark, short (`bench/waiting_bench.py`): threads made through the runtime, purchases
waiting for their users' approval asleep, approvals one at a time and at once while the host count goes
2 -> 4 -> 2. Latency and CPU are the benchmark's business; here what must hold at any size: every buyer
asleep while waiting (its safety-net checks run as the scheduler's probes), every purchase placed once, no
error any caller saw, nothing fenced.

It runs as its own process with its own Ray cluster and stack, as a user would run the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.slow


@pytest.mark.timeout(420)
def test_waiting_purchases_sleep_and_complete_once_while_the_hosts_change(tmp_path: Path) -> None:
    out = tmp_path / "waiting.json"
    sizes = ["--threads", "120", "--pending", "40", "--singles", "6", "--burst", "30"]
    # a safety-net check every 8 s per waiting purchase: the scheduler runs them as probes, no thread wakes
    args = [*sizes, "--window", "2", "--settle", "0", "--fallback", "8", "--out", str(out)]
    proc = run_isolated("bench/waiting_bench.py", *args, cwd=tmp_path, timeout=400)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert "failed" not in results, (results["failed"], proc.stdout[-3000:], proc.stderr[-3000:])
    assert results["waiting"]["live_buyers"] == 0 and results["waiting"]["activations_during_window"] == 0
    assert results["single_approvals"]["asleep_when_approved"] == 6
    assert results["single_approvals"]["approval_to_tool_result"]["n"] == 6
    burst = results["burst"]
    assert burst["results_written"] == burst["orders"] == 30, burst
    assert burst["host_change"]["fenced_activations"] == 0
    assert all(not status.startswith("5") for status in burst["http_reads"]["statuses"]), burst["http_reads"]
    totals = results["totals"]
    assert (totals["orders"], totals["approvals"], totals["ciba_requests"]) == (36, 36, 40), totals
    assert totals["caller_errors"] == {}
    assert totals["safety_net_probes"] > 0, totals
    assert proc.returncode == 0, proc.stdout[-3000:]
