"""The runtime on PostgreSQL, as its own process with its own Ray (the storage backend is chosen per
process, from `AGENT_STORAGE_URL` in the job's environment). Prints one JSON line of what it saw for
`tests/test_storage_postgres_runtime.py`. Run: `python tests/postgres_runtime_scenario.py URL ROOT SERVER`
(SERVER: `PostgresServer.to_json()`, so that the scenario can take the database away and bring it back).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def scenario(root: Path, server: Any) -> dict[str, Any]:
    from runtime import AgentNotFoundError, get_agent
    from tests.agents_under_test import QuickCounter
    from tests.lifecycle import live_agent_names, wait_until_hibernated
    from tests.waiting import eventually

    seen: dict[str, Any] = {}
    counters = [get_agent(QuickCounter, f"pg-{i}", storage_dir=root) for i in range(3)]
    for i, counter in enumerate(counters):
        for value in range(i + 1):
            await counter.append(value)
        await counter.put("label", f"counter {i}")
    seen["sequences"] = [await c.get("sequence") for c in counters]
    seen["labels"] = [await c.get("label") for c in counters]
    with_failure = counters[0]
    try:
        await with_failure.add_events_then_fail([1, 2, 3])
    except RuntimeError:
        pass
    seen["events_after_failed_transaction"] = await with_failure.events()

    # an alarm fires while its agent sleeps, and wakes it from the database
    await counters[1].schedule(2.0, "record_fire", {"n": 1})
    await wait_until_hibernated(root, "agents", "QuickCounter/pg-1", timeout=30)
    fires = await eventually(lambda: counters[1].get("fires"), timeout=30, what="the alarm, fired asleep")
    seen["fires"] = [f["payload"] for f in fires]

    # a SIGKILLed host: the agent comes back with everything it had acknowledged
    pid = (await counters[2].whoami())["pid"]
    os.kill(pid, signal.SIGKILL)
    seen["after_kill"] = await eventually(lambda: counters[2].get("sequence"), timeout=60, what="the agent back")
    seen["starts_after_kill"] = await counters[2].get("starts")

    try:
        await get_agent(QuickCounter, "never-made", storage_dir=root, create=False).get("x")
        seen["not_found"] = False
    except AgentNotFoundError:
        seen["not_found"] = True
    seen["live"] = sorted(await live_agent_names(root, "agents"))
    seen.update(await outage(root, server, counters[0]))

    # what `agentrt status` will read from the database: a far alarm and a schedule parked after its retries
    await counters[1].schedule(3600, "record_fire", {"n": 2})
    await counters[2].schedule(0.05, "always_fails", {"why": "test"})

    async def parked() -> Any:
        return await counters[2].get_schedules(status="failed")

    await eventually(parked, timeout=30, what="the failing schedule, parked")
    await wait_until_hibernated(root, "agents", "QuickCounter/pg-1", timeout=30)  # asleep, with its alarm
    seen.update(await scheduler_lost(root))
    return seen


async def scheduler_lost(root: Path) -> dict[str, Any]:
    """Two schedulers share the alarm table; the runtime's own one is lost for good while five agents sleep
    with alarms due: the other wakes every one of them, once."""
    import ray

    from runtime import get_agent
    from runtime.pg_operator import class_rows
    from runtime.placement import scheduler_name
    from runtime.scheduler import AlarmScheduler
    from tests.agents_under_test import QuickCounter
    from tests.lifecycle import wait_until_hibernated
    from tests.waiting import eventually

    root = await asyncio.to_thread(root.resolve)
    other = AlarmScheduler.options(name="another-scheduler", namespace="agents", num_cpus=0)  # type: ignore[attr-defined]
    other = other.remote(str(root), "agents")
    await other.pending.remote()
    sleepers = [get_agent(QuickCounter, f"sleeper-{i}", storage_dir=root) for i in range(5)]
    for i, sleeper in enumerate(sleepers):
        await sleeper.schedule(4.0, "record_fire", {"sleeper": i})
    for i in range(5):
        await wait_until_hibernated(root, "agents", f"QuickCounter/sleeper-{i}", timeout=30)
    ray.kill(ray.get_actor(scheduler_name(root), namespace="agents"), no_restart=True)

    def fires_on_record() -> dict[str, list[Any]]:  # read from the database: asking an agent would wake it
        rows = class_rows(os.environ["AGENT_STORAGE_URL"], "_kv", ["value"], "key = 'fires'")
        return {row["_owner"]: [f["payload"] for f in json.loads(row["value"])] for _, row in rows}

    async def all_fired() -> Any:
        fired = await asyncio.to_thread(fires_on_record)
        return fired if all(f"sleeper-{i}" in fired for i in range(5)) else None

    await eventually(all_fired, timeout=60, what="every sleeper's alarm, fired by the other scheduler")
    await asyncio.sleep(2.0)  # a second wake-up, if any, would record a second fire by now
    fired = await asyncio.to_thread(fires_on_record)
    return {
        "sleeper_fires": [fired[f"sleeper-{i}"] for i in range(5)],
        "woken_by_the_other": (await other.stats.remote())["woken"],
    }


async def outage(root: Path, server: Any, live: Any) -> dict[str, Any]:
    """The database goes away under a live and a sleeping agent, then comes back."""
    from runtime import StorageUnavailableError, get_agent
    from tests.agents_under_test import QuickCounter
    from tests.lifecycle import wait_until_hibernated
    from tests.waiting import eventually

    seen: dict[str, Any] = {}
    # the database goes away: a live agent's turn and a sleeping agent's wake-up fail as unavailable,
    # nothing half-written; once it is back, both work again by themselves
    asleep = get_agent(QuickCounter, "pg-asleep", storage_dir=root)
    await asleep.put("label", "asleep")
    await wait_until_hibernated(root, "agents", "QuickCounter/pg-asleep", timeout=30)
    await live.put("label", "live")
    server.pause()
    seen["during_outage"] = []
    for call in (lambda: live.append(9), lambda: asleep.get("label")):
        try:
            await asyncio.wait_for(call(), timeout=60)
            seen["during_outage"].append("answered")
        except StorageUnavailableError:
            seen["during_outage"].append("StorageUnavailableError")
    server.resume()

    def until_answered(call: Any) -> Any:
        async def attempt() -> Any:
            try:
                return await call()
            except StorageUnavailableError:  # a pooled connection the outage broke: one failed call, nothing written
                return None

        return attempt

    seen["after_outage"] = [
        await eventually(until_answered(lambda: live.append(9)), timeout=60, what="a turn after the outage"),
        await eventually(until_answered(lambda: asleep.get("label")), timeout=60, what="a wake-up after it"),
    ]
    seen["sequence_after_outage"] = await live.get("sequence")
    server.pause()  # a restart of the database with nobody calling: every pooled connection is now broken
    server.resume()
    try:  # the first read finds a working connection by itself
        seen["first_read_after_restart"] = await asyncio.wait_for(live.events(), timeout=60)
    except StorageUnavailableError:
        seen["first_read_after_restart"] = "StorageUnavailableError"
    return seen


def main() -> None:
    import ray

    import runtime
    from tests.postgres import PostgresServer

    url, root, server = sys.argv[1], Path(sys.argv[2]), PostgresServer.from_json(sys.argv[3])
    env = {"AGENT_STORAGE_URL": url, "PYTHONPATH": str(REPO), "AGENT_HOSTS": "2", "AGENT_IDLE_SECONDS": "1"}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
    runtime.init(storage_dir=root, namespace="agents")
    seen = asyncio.run(scenario(root, server))
    seen["sqlite_files"] = sorted(p.name for p in root.rglob("*.sqlite3") if "QuickCounter" in str(p))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
