"""Hibernation, the live cap and bounded creation (issue 8): real Ray, real host processes, real files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentCapacityError, AgentNotFoundError, get_agent
from runtime.host import AgentHost
from runtime.placement import PLACEMENT_FILE, host_name, runtime_dir
from runtime.settings import runtime_settings
from tests.agents_under_test import Counter, LingeringCounter, PlainCounter, QuickCounter, SlowLeavingCounter
from tests.conftest import RUNTIME_TEST_ENV, ray_init_kwargs
from tests.lifecycle import host_handles, host_stats, live_agent_names, wait_until_hibernated
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("ray_cluster")


def namespace() -> str:
    return runtime_settings().namespace


def start_host(storage_dir: Path, env: dict[str, str], *, hosts: int = 1) -> None:
    """Start the root's hosts with their own settings, as a deployer would with env vars (handles then
    find them by name)."""
    root = Path(storage_dir).resolve()
    runtime_dir(root).mkdir(parents=True, exist_ok=True)
    (runtime_dir(root) / PLACEMENT_FILE).write_text(json.dumps({"hosts": hosts}))
    base = ray_init_kwargs()["runtime_env"]["env_vars"]
    for slot in range(hosts):
        AgentHost.options(  # type: ignore[attr-defined]
            name=host_name(root, slot),
            namespace=namespace(),
            lifetime="detached",
            max_restarts=-1,
            num_cpus=0,
            max_concurrency=1000,
            runtime_env={"env_vars": {**base, **RUNTIME_TEST_ENV, **env}},
        ).remote(str(root), namespace(), slot)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stored_value(path: Path, key: str) -> Any:
    """Read one KV value straight from an agent's file (without calling, so without waking it)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM _kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


async def test_an_idle_agent_leaves_and_an_old_handle_brings_it_back(storage_dir: Path) -> None:
    agent = get_agent(QuickCounter, "sleepy-1", storage_dir=storage_dir)
    await agent.put("order", {"id": 42})
    await agent.set_state({"count": 4, "label": "kept"})
    first = await agent.whoami()

    await wait_until_hibernated(storage_dir, namespace(), "QuickCounter/sleepy-1", timeout=30)

    # the same handle, no error, every acknowledged write, on a new activation (its on_start ran again)
    assert await agent.get("order") == {"id": 42}
    assert (await agent.get_state()).label == "kept"
    assert await agent.get("starts") == 2
    assert (await agent.whoami())["token"] != first["token"]


async def test_an_empty_host_exits_and_calls_through_old_handles_still_succeed(storage_dir: Path) -> None:
    agent = get_agent(QuickCounter, "sleepy-2", storage_dir=storage_dir)
    await agent.put("k", "v")
    pid = (await agent.whoami())["pid"]

    # its only agent hibernates, then the host (a Ray worker process) exits on purpose: nothing stays
    # in memory for this storage root, and Ray does not restart it
    await eventually(lambda: not process_alive(pid), timeout=60, what="the host process to exit")
    assert host_handles(storage_dir, namespace()) == []

    assert await agent.get("k") == "v"  # the old handle: a fresh host, no error
    assert (await agent.whoami())["pid"] != pid
    assert await agent.get("starts") == 2


async def test_calls_racing_with_hibernation_run_exactly_once_in_order(storage_dir: Path) -> None:
    handles = [get_agent(SlowLeavingCounter, "race-1", storage_dir=storage_dir) for _ in range(5)]
    await handles[0].append(-1)

    async def leaving() -> bool:
        return any(stats["leaving"] for stats in await host_stats(storage_dir, namespace()))

    await eventually(leaving, timeout=30, interval=0.01, what="the agent to start leaving")
    values = [i * 100 + j for j in range(10) for i in range(len(handles))]
    results = await asyncio.gather(*(handles[v // 100].append(v) for v in values))

    sequence = await handles[0].get("sequence")
    assert sorted(sequence) == sorted([-1, *values])  # every call ran, none twice
    for i in range(len(handles)):
        mine = [v for v in sequence if v >= 0 and v // 100 == i]
        assert mine == sorted(mine), f"handle {i}'s calls ran out of order: {mine}"
    assert sorted(results) == list(range(2, len(values) + 2))
    assert await handles[0].get("starts") == 2  # the burst ran on the next activation


async def test_a_live_cap_bounds_live_agents_and_never_evicts_a_busy_one(storage_dir: Path) -> None:
    start_host(storage_dir, {"AGENT_MAX_LIVE": "5", "AGENT_IDLE_SECONDS": "600"})
    busy = get_agent(Counter, "busy", storage_dir=storage_dir)
    before = await busy.whoami()
    slow = asyncio.ensure_future(busy.slow(20))
    await eventually(lambda: _is_busy(busy), timeout=10, what="the slow turn to start")

    for i in range(30):
        await get_agent(Counter, f"cap-{i}", storage_dir=storage_dir).put("me", i)
        (stats,) = await host_stats(storage_dir, namespace())
        assert stats["live"] + stats["leaving"] <= 5, stats
        assert "Counter/busy" in stats["live_names"]
    (stats,) = await host_stats(storage_dir, namespace())
    assert stats["peak_occupied"] <= 5 and stats["evictions"] >= 25

    for i in range(30):  # everyone kept their data through eviction
        assert await get_agent(Counter, f"cap-{i}", storage_dir=storage_dir).get("me") == i
    slow.cancel()  # the turn goes on in the agent; only our wait for it stops
    assert (await busy.whoami())["token"] == before["token"]  # the busy agent was never evicted


async def _is_busy(agent: Any) -> bool:
    return (await agent.turn_stats())["busy"]


async def test_with_every_live_agent_busy_a_new_activation_is_refused_then_admitted(storage_dir: Path) -> None:
    start_host(storage_dir, {"AGENT_MAX_LIVE": "2", "AGENT_ACTIVATION_TIMEOUT": "1", "AGENT_IDLE_SECONDS": "600"})
    first, second = (get_agent(Counter, f"full-{i}", storage_dir=storage_dir) for i in range(2))
    turns = [asyncio.ensure_future(agent.slow(4)) for agent in (first, second)]
    for agent in (first, second):
        await eventually(lambda a=agent: _is_busy(a), timeout=10, what="a slow turn to start")

    third = get_agent(Counter, "full-2", storage_dir=storage_dir)
    with pytest.raises(AgentCapacityError) as refused:
        await third.put("x", 1)
    assert refused.value.retry_after > 0
    assert not Counter.storage_path(storage_dir, "full-2").exists()  # refused before anything ran

    assert await asyncio.gather(*turns) == ["slow done", "slow done"]
    await third.put("x", 1)  # room now: the least recently used idle agent makes way
    assert await third.get("x") == 1


async def test_a_read_of_an_unknown_agent_creates_nothing(storage_dir: Path) -> None:
    reader = get_agent(Counter, "never-made", storage_dir=storage_dir, create=False)
    with pytest.raises(AgentNotFoundError):
        await reader.get("anything")
    assert not Counter.storage_path(storage_dir, "never-made").exists()
    assert "Counter/never-made" not in await live_agent_names(storage_dir, namespace())

    await get_agent(Counter, "never-made", storage_dir=storage_dir).put("now", "made")
    assert await reader.get("now") == "made"  # once created, create=False handles reach it


async def test_a_plain_method_can_use_storage_as_the_very_first_call(storage_dir: Path) -> None:
    agent = get_agent(PlainCounter, "plain-1", storage_dir=storage_dir)
    await agent.write("k", {"v": 1})  # undecorated, first call on a brand-new agent: storage is open
    assert await agent.note("first") == 1  # and its migrations ran
    assert await agent.lookup("k") == {"v": 1}


async def test_a_crashed_host_brings_its_live_agents_back_at_once(storage_dir: Path) -> None:
    agent = get_agent(Counter, "eager-1", storage_dir=storage_dir)
    await agent.put("x", 1)
    pid = (await agent.whoami())["pid"]
    os.kill(pid, signal.SIGKILL)

    # nobody calls it: the restarted host re-activates what was live, so its on_start recovery runs now
    path = Counter.storage_path(storage_dir, "eager-1")
    await eventually(lambda: stored_value(path, "starts") == 2, timeout=60, what="re-activation after the crash")
    assert await agent.get("x") == 1


async def test_an_agent_deleted_by_its_own_schedule_is_erased_at_once_not_after_its_idle_time(
    storage_dir: Path,
) -> None:
    """A schedule fired by the agent's own timer that deletes it (a thread's retention): no call ends to
    start the erase, and the agent would linger, refusing calls, for its whole idle time (here ten minutes).
    The host erases it as soon as it is quiet."""
    agent = get_agent(LingeringCounter, "erased-by-schedule", storage_dir=storage_dir)
    await agent.schedule(0.2, "erase_myself")
    file = storage_dir / "LingeringCounter" / "erased-by-schedule.sqlite3"
    assert file.exists()
    await eventually(lambda: not file.exists(), timeout=20, what="the agent's file erased")
    with pytest.raises(AgentNotFoundError):
        await get_agent(LingeringCounter, "erased-by-schedule", storage_dir=storage_dir, create=False).get("x")


async def test_private_and_lifecycle_methods_cannot_be_called_through_a_handle(storage_dir: Path) -> None:
    agent = get_agent(Counter, "guarded-1", storage_dir=storage_dir)
    for method in ("close", "_prepare_to_leave", "_start", "no_such_method"):
        with pytest.raises(AttributeError):
            await agent.invoke(method)
    assert not Counter.storage_path(storage_dir, "guarded-1").exists()
    await agent.put("k", 1)  # the agent itself is fine
    assert await agent.get("k") == 1
