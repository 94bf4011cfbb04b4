"""`Activations` in one process, without Ray: what a refused call leaves behind (issue 8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime import AgentNotFoundError, turn_order
from runtime import activations as activations_module
from runtime.activations import Activations
from runtime.turn_order import TURN_TICKET_KWARG
from tests.agents_under_test import Counter
from tests.waiting import eventually


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


async def test_a_started_turn_runs_to_its_end_when_its_caller_is_cancelled(storage_dir: Path) -> None:
    """A client that disconnects (Serve then cancels its request) must not leave a turn half done."""
    activations = Activations(storage_dir, "ns", idle_seconds=0, max_live=10, activation_timeout=1)
    await activations.call(Counter, "turn-1", "put", ("ready", True))
    caller = asyncio.ensure_future(activations.call(Counter, "turn-1", "slow_put", ("k", "written", 0.3)))
    await eventually(lambda: activations.busy_names(), timeout=5, what="the turn to start")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert activations.busy_names() == ["Counter/turn-1"]  # still busy: it cannot be evicted mid-turn

    async def written() -> bool:
        return await activations.call(Counter, "turn-1", "get", ("k",)) == "written"

    await eventually(written, timeout=5, what="the cancelled caller's turn to finish")
    await eventually(lambda: not activations.busy_names(), timeout=5, what="the agent to be released")
    for name in activations.live_names():
        await activations._live[name].close()


async def test_a_call_that_checks_the_agent_exists_joins_an_activation_made_meanwhile(
    storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that must not create (the alarm scheduler's wake-up) first asks whether the agent exists; on
    PostgreSQL that is a query, a real wait. A call arriving meanwhile activates the agent: the first call
    must then use that activation, not make a second one that fences the first off mid-turn. (On SQLite the
    check is a file lookup that never yields, so a short pause stands in for the database's round trip.)"""
    activations = Activations(storage_dir, "ns", idle_seconds=0, max_live=10, activation_timeout=1)
    await activations.call(Counter, "race-1", "put", ("k", 1))
    await activations._begin_leave("Counter/race-1")  # asleep: on file, not live
    real_check = activations_module.agent_exists

    async def checked_over_a_round_trip(*args: object) -> bool:
        await asyncio.sleep(0.1)
        return await real_check(*args)

    monkeypatch.setattr(activations_module, "agent_exists", checked_over_a_round_trip)
    before = activations.counters["activations"]
    wake = asyncio.ensure_future(activations.call(Counter, "race-1", "whoami", create=False))
    await asyncio.sleep(0.02)  # the wake-up is inside its existence check
    message = await activations.call(Counter, "race-1", "whoami")
    assert (await wake)["token"] == message["token"], "one activation, used by both calls"
    assert activations.counters["activations"] == before + 1
    for name in activations.live_names():
        await activations._live[name].close()
