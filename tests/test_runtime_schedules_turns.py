"""Runtime: schedules (once, cron, cancel, retry/park, after crash and cluster restart) and turns (issue 2, 3-5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import ray

import runtime
from runtime import get_agent
from runtime.status import live_agents
from tests.agents_under_test import Counter, QuickCounter
from tests.conftest import ray_init_kwargs
from tests.lifecycle import host_stats, wait_until_hibernated
from tests.test_runtime_identity_storage import RESTARTING
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("ray_cluster")


def delete_alarm_index(storage_dir: Path) -> int:
    """Delete the alarm index and the hosts' resident lists (and their journal files), as a node's lost
    disk would; return how many index files there were."""
    found = list((storage_dir / "_runtime").glob("alarm_index.sqlite3*"))
    for path in (storage_dir / "_runtime" / "hosts").glob("*.sqlite3*"):
        path.unlink()
    for path in found:
        path.unlink()
    return len(found)


def read_kv_from_file(file: Path, key: str):
    """Read a value straight from the agent's SQLite file, without calling (or waking) the agent."""
    if not file.exists():
        return None
    with sqlite3.connect(file) as conn:
        row = conn.execute("SELECT value FROM _kv WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


async def test_schedule_fires_once_on_time_with_payload(storage_dir: Path) -> None:
    agent = get_agent(Counter, "once-1", storage_dir=storage_dir)
    await agent.ready()
    in_seconds = await agent.schedule(0.6, "record_fire", {"n": 1})
    at_datetime = await agent.schedule(datetime.now(UTC) + timedelta(seconds=0.9), "record_fire", {"n": 2})

    fires = await eventually(lambda: _fires_when(agent, 2), timeout=10, what="two fires")
    assert [f["payload"] for f in fires] == [{"n": 1}, {"n": 2}]
    for fire, sched in zip(fires, [in_seconds, at_datetime], strict=True):
        assert 0 <= fire["at"] - sched.due_at < 0.1, f"lateness {fire['at'] - sched.due_at:.3f}s"
    assert await agent.get_schedules() == []
    # Exactly once: a later sentinel fires, and the two did not fire again before it.
    sentinel = await agent.schedule(0.3, "record_fire", "sentinel")
    fires = await eventually(lambda: _fires_when(agent, 3), timeout=10, what="sentinel")
    assert [f["payload"] for f in fires] == [{"n": 1}, {"n": 2}, "sentinel"]
    assert fires[-1]["at"] >= sentinel.due_at


async def _fires_when(agent, count: int):
    fires = await agent.get("fires") or []
    return fires if len(fires) >= count else None


async def test_cron_schedule_fires_repeatedly(storage_dir: Path) -> None:
    agent = get_agent(Counter, "cron-1", storage_dir=storage_dir)
    sched = await agent.schedule("* * * * * *", "record_fire", "tick")  # every second (6th field: seconds)
    assert sched.kind == "cron"
    fires = await eventually(lambda: _fires_when(agent, 3), timeout=10, what="three cron fires")
    seconds = [int(f["at"]) for f in fires[:3]]
    assert len(set(seconds)) == 3, "one fire per second"
    (still,) = await agent.get_schedules()
    assert still.id == sched.id and still.due_at > fires[2]["at"]
    assert await agent.cancel_schedule(sched.id) is True


async def test_cancelled_schedule_never_fires(storage_dir: Path) -> None:
    agent = get_agent(Counter, "cancel-1", storage_dir=storage_dir)
    doomed = await agent.schedule(0.3, "record_fire", "cancelled")
    assert await agent.cancel_schedule(doomed.id) is True
    assert await agent.cancel_schedule(doomed.id) is False
    await agent.schedule(0.8, "record_fire", "sentinel")
    fires = await eventually(lambda: _fires_when(agent, 1), timeout=10, what="sentinel")
    assert [f["payload"] for f in fires] == ["sentinel"]


async def test_failing_callback_is_retried_with_backoff_then_parked(storage_dir: Path) -> None:
    agent = get_agent(Counter, "fail-1", storage_dir=storage_dir)
    sched = await agent.schedule(0, "always_fails", None)

    async def parked():
        return await agent.get_schedules(status="failed")

    (failed,) = await eventually(parked, timeout=15, what="schedule parked as failed")
    assert failed.id == sched.id
    assert failed.attempts == Counter.schedule_max_retries + 1
    assert "callback failure #4" in (failed.last_error or "")
    attempts = await agent.get("fail_attempts")
    assert len(attempts) == 4
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    base = Counter.schedule_retry_base_seconds
    for i, gap in enumerate(gaps):
        assert gap >= base * 2**i * 0.9, f"gap {i} = {gap:.3f}s is shorter than the backoff"
    assert gaps[2] > gaps[0]
    # Parked schedules are not retried any more: a later sentinel fires and the attempts stay at 4.
    await agent.schedule(0.5, "record_fire", "sentinel")
    await eventually(lambda: _fires_when(agent, 1), timeout=10, what="sentinel")
    assert len(await agent.get("fail_attempts")) == 4


async def test_schedule_due_while_actor_dead_fires_after_restart(storage_dir: Path) -> None:
    agent = get_agent(Counter, "dead-1", storage_dir=storage_dir)
    pid = await agent.process_id()
    sched = await agent.schedule(0.3, "record_fire", "after-crash")
    os.kill(pid, signal.SIGKILL)  # the due time passes while Ray restarts the process
    file = storage_dir / "Counter" / "dead-1.sqlite3"

    fires = await eventually(lambda: read_kv_from_file(file, "fires"), timeout=60, what="fire after restart")
    assert [f["payload"] for f in fires] == ["after-crash"]
    assert fires[0]["at"] >= sched.due_at
    new_pid = await eventually(agent.process_id, timeout=30, ignore=RESTARTING)
    assert new_pid != pid


async def test_schedule_pending_across_full_cluster_restart_fires_without_a_call(storage_dir: Path) -> None:
    agent = get_agent(Counter, "cluster-1", storage_dir=storage_dir)
    sched = await agent.schedule(1.0, "record_fire", "after-cluster-restart")
    ray.shutdown()
    down_at = time.time()
    file = storage_dir / "Counter" / "cluster-1.sqlite3"
    assert read_kv_from_file(file, "fires") is None

    ray.init(**ray_init_kwargs())
    runtime.init(storage_dir=storage_dir)  # starts the alarm scheduler; nobody calls the agent

    fires = await eventually(lambda: read_kv_from_file(file, "fires"), timeout=60, what="fire after cluster restart")
    assert [f["payload"] for f in fires] == ["after-cluster-restart"]
    assert fires[0]["at"] >= sched.due_at and fires[0]["at"] > down_at


async def test_a_lost_alarm_index_is_rebuilt_from_the_agents_files(storage_dir: Path) -> None:
    """Issue 21: the index is a copy of what the agents' files say; losing it (with the hosts' resident
    lists) while the cluster is down loses no alarm (the scheduler rebuilds it from the files at start-up,
    each file naming its class)."""
    agent = get_agent(QuickCounter, "lost-index-1", storage_dir=storage_dir)
    await agent.schedule(4.0, "record_fire", "after-index-lost")
    idle = get_agent(QuickCounter, "lost-index-2", storage_dir=storage_dir)
    await idle.put("x", 1)  # no schedule: nothing to index for it
    await wait_until_hibernated(storage_dir, "agents-tests", "QuickCounter/lost-index-1", timeout=30)
    ray.shutdown()
    file = storage_dir / "QuickCounter" / "lost-index-1.sqlite3"
    assert read_kv_from_file(file, "_class_path") == "tests.agents_under_test:QuickCounter"
    assert delete_alarm_index(storage_dir) >= 1

    ray.init(**ray_init_kwargs())
    scheduler = runtime.init(storage_dir=storage_dir)  # nobody calls the agent: only the index can wake it

    fires = await eventually(lambda: read_kv_from_file(file, "fires"), timeout=60, what="fire, the index lost")
    assert [f["payload"] for f in fires] == ["after-index-lost"]
    assert not any("lost-index-2" in key for key in await scheduler.pending.remote())


async def test_a_scheduler_killed_for_good_is_started_anew_and_a_sleeping_agents_alarm_still_fires(
    storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 22: Ray restarts a crashed scheduler, but not one killed with `no_restart` (or out of restarts).
    Every ingress replica watches it and starts a new one: without it no sleeping agent would ever wake."""
    from runtime import registry
    from runtime.placement import scheduler_name
    from runtime.storage_root import resolve_namespace

    monkeypatch.setattr(registry, "SUPERVISE_SECONDS", 0.5)
    namespace = resolve_namespace(None)  # get_agent's
    scheduler, _ = registry.start_runtime(storage_dir, namespace)
    watch = registry.SchedulerWatch(await asyncio.to_thread(storage_dir.resolve), namespace)  # as a replica's
    try:
        # The old scheduler must be killed well before the alarm is due: one that had already sent the
        # wake-up would fire it without any successor. A loaded machine that took too long to put the agent
        # to sleep gets another agent with a later alarm.
        for attempt, delay in enumerate((6.0, 15.0, 30.0), start=1):
            agent = get_agent(QuickCounter, f"orphaned-{attempt}", storage_dir=storage_dir)
            scheduled = await agent.schedule(delay, "record_fire", "with-a-new-scheduler")
            await wait_until_hibernated(storage_dir, namespace, f"QuickCounter/orphaned-{attempt}", timeout=30)
            if scheduled.due_at - time.time() > 2.0:
                break
            await agent.cancel_schedule(scheduled.id)
        else:
            pytest.fail("the agent never went to sleep 2 s before its alarm, even 30 s ahead")
        file = storage_dir / "QuickCounter" / f"orphaned-{attempt}.sqlite3"
        ray.kill(scheduler, no_restart=True)
        fires = await eventually(lambda: read_kv_from_file(file, "fires"), timeout=60, what="the alarm to fire")
    finally:
        await asyncio.to_thread(watch.stop)  # before any later test shuts Ray down
    assert [f["payload"] for f in fires] == ["with-a-new-scheduler"]
    assert watch.revived == 1
    successor = ray.get_actor(scheduler_name(watch.root), namespace=namespace)
    assert successor._actor_id != scheduler._actor_id

    async def successor_woke_it() -> bool:  # its count goes up once the wake-up returns, after the fire
        return (await successor.stats.remote())["woken"] >= 1

    await eventually(successor_woke_it, timeout=30, what="the new scheduler to count the wake-up it made")


@pytest.mark.slow
async def test_a_backlog_of_overdue_alarms_after_a_restart_is_woken_at_a_bounded_pace_each_once(
    storage_dir: Path,
) -> None:
    """Issue 22: 150 sleeping agents whose alarms fall due while the cluster is down. After the restart the
    scheduler wakes them with at most `AGENT_SCHEDULER_MAX_WAKES` (32) wake-ups at once (backpressure, not
    150 activations at the same moment), and every alarm fires exactly once. (`bench/waiting_bench.py`
    measures it at scale.)"""
    n = 150
    agents = [get_agent(QuickCounter, f"backlog-{i}", storage_dir=storage_dir) for i in range(n)]
    for start in range(0, n, 50):
        await asyncio.gather(*(agent.put("x", 1) for agent in agents[start : start + 50]))
    due = datetime.now(UTC) + timedelta(seconds=20)
    for start in range(0, n, 50):
        await asyncio.gather(*(a.schedule(due, "record_fire", "backlog") for a in agents[start : start + 50]))

    async def all_asleep() -> bool:  # left memory, and their hosts' resident lists say so
        stats = await host_stats(storage_dir, "agents-tests")
        return sum(s["live"] + s["leaving"] for s in stats) == 0 and not live_agents(storage_dir)

    await eventually(all_asleep, timeout=60, interval=0.5, what="the agents asleep")
    ray.shutdown()
    files = [storage_dir / "QuickCounter" / f"backlog-{i}.sqlite3" for i in range(n)]
    assert all(read_kv_from_file(f, "fires") is None for f in files)  # nothing fired before the restart
    await asyncio.sleep(max(0.0, due.timestamp() + 1.0 - time.time()))  # every alarm now overdue

    ray.init(**ray_init_kwargs())
    scheduler = runtime.init(storage_dir=storage_dir)

    def fired() -> list[Any]:
        found = [read_kv_from_file(f, "fires") for f in files]
        return found if all(found) else []

    found = await eventually(lambda: asyncio.to_thread(fired), timeout=180, interval=1.0, what="every alarm")
    await asyncio.sleep(1.0)  # a second wake-up, had there been one, would have recorded by now
    assert [len(f) for f in fired()] == [1] * n
    stats = await scheduler.stats.remote()
    assert 1 < stats["peak_in_flight"] <= stats["max_wakes"] < n, stats
    assert len(found) == n


async def test_fifty_concurrent_mutations_apply_one_at_a_time_in_order(storage_dir: Path) -> None:
    agent = get_agent(Counter, "turns-1", storage_dir=storage_dir)
    await agent.ready()
    results = await asyncio.gather(*[agent.append(i) for i in range(50)])
    assert results == list(range(1, 51))
    assert await agent.get("sequence") == list(range(50))
    assert (await agent.get_state()).count == 50
    assert (await agent.turn_stats())["max_active_turns"] == 1


async def test_read_does_not_wait_behind_a_slow_turn(storage_dir: Path) -> None:
    agent = get_agent(Counter, "turns-2", storage_dir=storage_dir)
    await agent.put("visible", "yes")
    slow = asyncio.ensure_future(agent.slow(3.0))
    await eventually(lambda: _busy(agent), timeout=10, what="slow turn running")
    started = time.monotonic()
    assert await agent.get("visible") == "yes"
    assert await agent.get_schedules() == []
    elapsed = time.monotonic() - started
    assert not slow.done(), "the read must have returned while the slow turn was still running"
    assert elapsed < 1.0
    assert await slow == "slow done"


async def _busy(agent) -> bool:
    return (await agent.turn_stats())["busy"]
