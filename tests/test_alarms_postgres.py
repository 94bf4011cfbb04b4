"""Alarms kept by the database (issue 21, PostgreSQL; a real throwaway server, no Ray): an agent's next due
time is written by its own schedule transaction (rolled back with it, refused with it when the activation
is stale, and no other agent's to touch), and schedulers claim due agents with leases, so several share
the work without waking one agent twice and an alarm held by a scheduler that died is claimed again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from runtime.errors import StaleActivationError
from runtime.pg_alarms import AlarmTable
from runtime.pg_pool import close_pools
from runtime.schedules import SCHEDULES_MIGRATIONS
from runtime.storage_pg import PostgresAgentStorage
from tests.postgres import PostgresServer

CLASS_PATH = "tests.alarms:Sleeper"
INSERT = (
    "INSERT INTO _schedules(id, callback, payload, kind, cron, due_at, created_at) "
    "VALUES (?, 'wake', 'null', 'once', NULL, ?, 0)"
)


@pytest.fixture
async def database(postgres: PostgresServer) -> AsyncIterator[str]:
    """A database of its own (the alarm table is shared by every agent of a database)."""
    yield postgres.new_database(f"alarms_{uuid.uuid4().hex[:12]}")
    await close_pools()


@pytest.fixture
async def agent(database: str) -> Callable[[str], Any]:
    async def open_agent(agent_id: str) -> PostgresAgentStorage:
        storage = PostgresAgentStorage(database, "Sleeper", agent_id)
        await storage.open()
        await storage.take_epoch()
        await storage.migrate("runtime.Agent", SCHEDULES_MIGRATIONS)
        assert await storage.track_next_due(CLASS_PATH) and storage.keeps_next_due
        return storage

    return open_agent


async def table(database: str, owner: str, lease: float = 60.0) -> AlarmTable:
    alarms = AlarmTable(database, owner, grace=0.0, lease_seconds=lease, batch=10)
    await alarms.open()
    return alarms


async def test_the_next_due_time_moves_with_the_schedule_transaction(database: str, agent: Any) -> None:
    a = await agent("a")
    alarms = await table(database, "s1")
    await a.execute(INSERT, ("x", 500.0))
    await a.execute(INSERT, ("y", 200.0))
    assert await alarms.pending() == {(CLASS_PATH, "a"): 200.0}
    await a.execute("DELETE FROM _schedules WHERE id = 'y'")
    assert await alarms.pending() == {(CLASS_PATH, "a"): 500.0}

    with pytest.raises(RuntimeError):  # rolled back: the alarm with it
        async with a.transaction() as tx:
            await tx.execute(INSERT, ("z", 100.0))
            raise RuntimeError("the turn failed")
    assert await alarms.pending() == {(CLASS_PATH, "a"): 500.0}

    newer = PostgresAgentStorage(database, "Sleeper", "a")
    await newer.open()
    await newer.take_epoch()  # a newer activation elsewhere: this one is stale
    with pytest.raises(StaleActivationError):
        await a.execute(INSERT, ("z", 50.0))
    assert await alarms.pending() == {(CLASS_PATH, "a"): 500.0}

    await newer.execute("UPDATE _schedules SET status = 'failed'")  # nothing pending: no alarm
    assert await alarms.pending() == {}


async def test_an_agent_cannot_see_or_touch_another_agents_alarm(database: str, agent: Any) -> None:
    a, b = await agent("a"), await agent("b")
    alarms = await table(database, "s1")
    await a.execute(INSERT, ("x", 300.0))
    assert await b.fetchall("SELECT * FROM agentrt_runtime.alarms") == []
    assert await b.execute("UPDATE agentrt_runtime.alarms SET next_due = 1") == 0
    assert await b.execute("DELETE FROM agentrt_runtime.alarms") == 0
    assert await alarms.pending() == {(CLASS_PATH, "a"): 300.0}


async def test_schedulers_share_due_alarms_and_a_dead_ones_lease_runs_out(database: str, agent: Any) -> None:
    now = time.time()
    for i in range(30):
        await (await agent(f"a{i}")).execute(INSERT, ("x", now - 1))
    first, second = await table(database, "s1"), await table(database, "s2")
    claimed = await asyncio.wait_for(asyncio.gather(first.claim(), second.claim(), first.claim()), 30)
    keys = [key for batch in claimed for key, _ in batch]
    assert len(keys) == len(set(keys)) == 30  # each due agent to exactly one scheduler, ten at a time

    dying = await table(database, "dying", lease=1.0)
    await (await agent("late")).execute(INSERT, ("x", time.time() - 1))
    assert [key for key, _ in await dying.claim()] == [(CLASS_PATH, "late")]  # then it "dies"
    started = time.monotonic()
    assert [key for key, _ in await asyncio.wait_for(second.claim(), 30)] == [(CLASS_PATH, "late")]
    assert time.monotonic() - started >= 0.5  # not before the dead scheduler's lease ran out

    await second.release((CLASS_PATH, "late"), 0.0, None)
    await second.park((CLASS_PATH, "late"), "cannot load it")
    with pytest.raises(TimeoutError):  # parked: nobody claims it
        await asyncio.wait_for(first.claim(), 1.5)
    await first.unpark(CLASS_PATH)
    assert [key for key, _ in await asyncio.wait_for(first.claim(), 10)] == [(CLASS_PATH, "late")]


async def test_a_sleeping_agents_alarm_is_claimed_at_its_due_time_a_live_ones_after_a_grace(
    database: str, agent: Any
) -> None:
    a = await agent("a")
    await a.execute(INSERT, ("x", time.time() - 1))
    patient = AlarmTable(database, "s1", grace=3600.0, lease_seconds=60.0)
    await patient.open()
    with pytest.raises(TimeoutError):  # live (its own timer fires it): not for an hour past its time
        await asyncio.wait_for(patient.claim(), 1.5)
    await a.mark_asleep()  # it leaves memory: the alarm is its only way back
    assert [key for key, _ in await asyncio.wait_for(patient.claim(), 10)] == [(CLASS_PATH, "a")]
    await patient.release((CLASS_PATH, "a"), 0.0, None)
    await a.execute(INSERT, ("y", time.time() + 60))  # a schedule change (not the soonest): it is live again
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(patient.claim(), 1.5)


async def test_a_sleeping_agents_alarm_carries_its_probe_until_it_is_live_again(database: str, agent: Any) -> None:
    """The probe a sleeping agent's alarm carries (`runtime.alarm_probes`) is kept in its row: the scheduler
    reads it for a claimed alarm, moves the alarm when the probe says "not yet", and the agent's next
    schedule change (it is live again) drops it."""
    a = await agent("a")
    due = time.time() - 1
    await a.execute(INSERT, ("x", due))
    alarms = await table(database, "s1")
    await a.mark_asleep('{"prober": "m:f", "payload": "p"}')
    ((key, claimed_due),) = await asyncio.wait_for(alarms.claim(), 10)
    assert await alarms.probe(key, claimed_due) == '{"prober": "m:f", "payload": "p"}'
    later = time.time() + 3600
    await alarms.defer(key, claimed_due, later)
    assert await alarms.pending() == {key: later}
    assert await alarms.probe(key, later) is not None  # still asleep: the next look runs the probe again
    await a.execute(INSERT, ("y", time.time() + 60))  # live again: its schedules say when, with no probe
    (due_now,) = (await alarms.pending()).values()
    assert due_now == pytest.approx(due) and await alarms.probe(key, due_now) is None
