"""The test kit (`agentrt.testing`) as a user meets it: `pytest examples/` runs the travel agent's tests,
written with the kit, in their own process (the kit starts its own Ray and embedded stack), and they pass;
a test that leaves a request pending on the phone does not leak it into the next test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.isolated import REPO, SESSION_ONLY

pytestmark = pytest.mark.slow


def run_pytest(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SESSION_ONLY)}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_examples_tests_pass_with_the_kit_and_a_request_left_pending_is_denied_before_the_next(
    tmp_path: Path,
) -> None:
    """One pytest process (the kit starts Ray and the embedded stack once): `examples/` as a user runs it,
    then two tests of our own in another folder, the first leaving a request pending on the phone."""
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture(scope='session')\ndef agentrt_agent():\n"
        "    return 'examples.travel_agent:TravelAgent'\n"
    )
    (tmp_path / "test_leftovers.py").write_text(
        """
BOOK = '/book_trip {"destination": "Oslo", "seats": 1}'


async def test_leaves_a_request_pending(agentrt):
    async with agentrt.client("alice") as alice:
        await alice.send_message("left-1", BOOK)
        assert len(await agentrt.pending_requests("alice")) == 1


async def test_finds_the_phone_empty(agentrt):
    assert await agentrt.pending_requests("alice") == []
"""
    )
    proc = run_pytest("examples", str(tmp_path), "-p", "no:randomly", "-c", str(REPO / "pyproject.toml"), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "5 passed" in proc.stdout
    assert "PASSED test_leftovers.py::test_finds_the_phone_empty" in proc.stdout
