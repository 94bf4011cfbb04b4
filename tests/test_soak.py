"""The soak benchmark, short: a few users for a minute while a host is SIGKILLed, the checkout API
restarts and the authorization server stalls; then nothing lost, doubled or stuck (`bench/soak_bench.py`
checks the invariants from the threads' files and the checkout's database; here they must all hold).

It runs as its own process with its own Ray cluster and stack, as a user would run the benchmark, with
none of this session's configuration in its environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_a_short_soak_with_crashes_restarts_and_a_stall_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = ["--users", "6", "--minutes", "0.5", "--kill-every", "12", "--checkout-every", "20", "--stall", "16"]
    args += ["--lost-answer-every", "10"]
    proc = run_isolated("bench/soak_bench.py", *args, "--drain", "150", "--out", str(out), cwd=tmp_path, timeout=540)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["violation_counts"] == {name: 0 for name in report["violation_counts"]}, report["violations"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    faults = report["faults"]
    assert faults.get("host_sigkill", 0) >= 1 and faults.get("checkout_restart", 0) >= 1, faults
    assert faults.get("authz_stall") == 1, faults
    assert faults.get("checkout_answer_lost", 0) >= 1 and faults.get("authz_gateway_error_after_acting", 0) >= 1
    decided = report["purchases_decided"]
    assert decided.get("approved", 0) >= 1 and report["orders_placed"] >= 1, report
    assert report["messages_acknowledged"] >= 30, report
