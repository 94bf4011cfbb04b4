"""`Activations` in one process, without Ray: what a refused call leaves behind (issue 8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime import AgentNotFoundError, turn_order
from runtime.activations import Activations
from runtime.turn_order import TURN_TICKET_KWARG
from tests.agents_under_test import Counter


async def test_a_turn_refused_before_it_ran_does_not_hold_up_the_next(
    storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posting to a new thread is refused (not found), then sent again once the thread exists: the second
    call, the submitter's next in order, must be admitted at once, not after waiting for the first."""
    monkeypatch.setattr(turn_order, "GAP_TIMEOUT_SECONDS", 60.0)  # a wrongly awaited gap would hang the test
    activations = Activations(storage_dir, "ns", idle_seconds=0, max_live=10, activation_timeout=1)
    with pytest.raises(AgentNotFoundError):
        await activations.call(Counter, "new-1", "put", ("k", 1), {TURN_TICKET_KWARG: ("me", 0)}, create=False)
    assert not Counter.storage_path(storage_dir, "new-1").exists()

    call = activations.call(Counter, "new-1", "put", ("k", 2), {TURN_TICKET_KWARG: ("me", 1)}, create=True)
    await asyncio.wait_for(call, timeout=10)
    assert await activations.call(Counter, "new-1", "get", ("k",)) == 2
    for name in activations.live_names():
        await activations._live[name].close()
