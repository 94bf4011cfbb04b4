"""Run a scenario or benchmark script as its own process, with its own Ray cluster and stack, and none of
this session's configuration in its environment (the tests that need exact counts or several nodes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SESSION_ONLY = ("AUTH", "CIBA_", "CHECKOUT_", "OPENAI_", "AGENT_", "AGENTRT_", "RAY_ADDRESS")
"""Variables this session sets for its own Ray job: the isolated process must not inherit them."""


def run_isolated(script: str, *args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python <repo>/<script> <args>` from `cwd`, its output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SESSION_ONLY)}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
