"""Runtime: identity, isolation, durable storage across SIGKILL and cluster restarts (issue 2, tests 1-2, 6)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError

import runtime
from runtime import InvalidAgentIdError, InvalidScheduleError, get_agent, get_agent_sync
from tests.agents_under_test import Counter, PlainCounter
from tests.conftest import ray_init_kwargs
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("ray_cluster")

RESTARTING = (ActorUnavailableError, ActorDiedError, ray.exceptions.RayActorError)


@ray.remote(num_cpus=0)
class Prober:
    """Another actor that addresses an agent by id, as other agents or services would."""

    async def whoami(self, agent_id: str, storage_dir: str) -> dict:
        from runtime import get_agent as get
        from tests.agents_under_test import Counter as AgentClass

        return await get(AgentClass, agent_id, storage_dir=storage_dir).whoami()


async def test_same_id_reaches_the_same_instance_from_driver_and_actor(storage_dir: Path) -> None:
    first = get_agent(Counter, "same-1", storage_dir=storage_dir)
    second = get_agent(Counter, "same-1", storage_dir=storage_dir)
    other = get_agent(Counter, "other-1", storage_dir=storage_dir)

    me = await first.whoami()
    assert me == await second.whoami()
    assert me["name"] == "Counter/same-1"
    prober = Prober.remote()
    assert await prober.whoami.remote("same-1", str(storage_dir)) == me
    ray.kill(prober)

    # Different ids are different instances with separate storage.
    assert (await other.whoami())["token"] != me["token"]
    await first.put("secret", "only-in-same-1")
    assert await other.get("secret") is None
    assert await first.get("secret") == "only-in-same-1"
    assert (storage_dir / "Counter" / "same-1.sqlite3").exists()
    assert (storage_dir / "Counter" / "other-1.sqlite3").exists()


def test_sync_twin_for_scripts(storage_dir: Path) -> None:
    agent = get_agent_sync(Counter, "sync-1", storage_dir=storage_dir, timeout=30)
    agent.put("k", {"v": 1})
    assert agent.get("k") == {"v": 1}
    assert agent.append(7) == 1
    assert agent.get_state().count == 1


async def test_state_and_kv_round_trip(storage_dir: Path) -> None:
    agent = get_agent(Counter, "kv-1", storage_dir=storage_dir)
    await agent.put("user:1", {"name": "alice"})
    await agent.put("user:2", {"name": "bob"})
    await agent.put("other", 3)
    assert await agent.list_keys("user:") == {"user:1": {"name": "alice"}, "user:2": {"name": "bob"}}
    state = await agent.set_state({"count": 5, "label": "five"})
    assert state.count == 5 and (await agent.get_state()).label == "five"
    with pytest.raises(ValueError):
        await agent.set_state({"count": "not a number"})
    assert (await agent.get_state()).count == 5


async def test_an_id_whose_file_belongs_to_another_id_is_refused_before_it_starts(storage_dir: Path) -> None:
    """On a case-insensitive filesystem `case-a` and `CASE-A` are one file. Simulated here by a file that
    already records another id: the second id is refused before `on_start`, a schedule or a write."""
    from runtime import AgentIdConflictError
    from runtime.storage import AgentStorage

    victim = await AgentStorage(Counter.storage_path(storage_dir, "CASE-A")).open()
    await victim.setdefault("_agent_id", "case-a")
    await victim.put("starts", 1)
    await victim.close()
    with pytest.raises(AgentIdConflictError, match="case-a"):
        await get_agent(Counter, "CASE-A", storage_dir=storage_dir).get("starts")
    after = await AgentStorage(Counter.storage_path(storage_dir, "CASE-A")).open()
    try:
        assert await after.get("starts") == 1  # its on_start never ran
        assert await after.get("_agent_id") == "case-a"
    finally:
        await after.close()


async def test_transaction_is_atomic(storage_dir: Path) -> None:
    agent = get_agent(Counter, "tx-1", storage_dir=storage_dir)
    with pytest.raises(RuntimeError, match="boom after inserts"):
        await agent.add_events_then_fail([1, 2, 3])
    assert await agent.events() == []


async def wait_for_restart(agent, old_pid: int) -> int:
    async def new_pid() -> int | None:
        pid = await agent.process_id()
        return pid if pid != old_pid else None

    return await eventually(new_pid, timeout=60, interval=0.2, what="actor restart", ignore=RESTARTING)


async def test_acknowledged_write_survives_sigkill(storage_dir: Path) -> None:
    agent = get_agent(Counter, "kill-1", storage_dir=storage_dir)
    await agent.put("order", {"id": 42, "status": "placed"})
    await agent.set_state({"count": 9, "label": "before kill"})
    assert await agent.get("starts") == 1
    pid = await agent.process_id()

    os.kill(pid, signal.SIGKILL)
    await wait_for_restart(agent, pid)

    assert await agent.get("order") == {"id": 42, "status": "placed"}
    assert (await agent.get_state()).label == "before kill"
    assert await agent.get("starts") == 2  # on_start ran again after the restart, with storage loaded


async def test_data_survives_full_ray_restart(storage_dir: Path) -> None:
    agent = get_agent(Counter, "restart-1", storage_dir=storage_dir)
    await agent.put("kept", ["a", "b"])
    await agent.set_state({"count": 3, "label": "kept"})

    ray.shutdown()
    ray.init(**ray_init_kwargs())
    runtime.init(storage_dir=storage_dir)

    again = get_agent(Counter, "restart-1", storage_dir=storage_dir)
    assert await again.get("kept") == ["a", "b"]
    assert (await again.get_state()).count == 3
    assert await again.get("starts") == 2


async def test_invalid_ids_are_refused_before_anything_is_made(storage_dir: Path) -> None:
    before = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    for bad in ["", "a/b", "../etc", "..", "x" * 129, "spaces here", "ümlaut", None, 12]:
        with pytest.raises(InvalidAgentIdError):
            get_agent(Counter, bad, storage_dir=storage_dir)  # type: ignore[arg-type]
    after = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert {n for n in after - before if n.startswith("Counter/")} == set()
    assert not (storage_dir / "Counter").exists()
    with pytest.raises(TypeError):
        get_agent(dict, "fine", storage_dir=storage_dir)  # type: ignore[arg-type]


async def test_bad_schedule_requests_leave_data_untouched(storage_dir: Path) -> None:
    from datetime import UTC, datetime, timedelta

    agent = get_agent(Counter, "bad-sched-1", storage_dir=storage_dir)
    await agent.put("keep", 1)
    kept = await agent.schedule(3600, "record_fire", {"keep": True})
    file = storage_dir / "Counter" / "bad-sched-1.sqlite3"

    def snapshot() -> list:
        with sqlite3.connect(file) as conn:
            return (
                conn.execute("SELECT * FROM _schedules ORDER BY id").fetchall()
                + conn.execute("SELECT * FROM _kv ORDER BY key").fetchall()
            )

    before = snapshot()
    bad_requests = [
        ((10, "no_such_method", None), "no method"),
        ((10, "_run_due_schedules", None), "private or reserved"),
        ((10, "schedule", None), "private or reserved"),
        ((-1, "record_fire", None), "in the past"),
        ((datetime.now(UTC) - timedelta(minutes=5), "record_fire", None), "in the past"),
        (("61 * * * *", "record_fire", None), "not a valid cron"),
        (("every tuesday", "record_fire", None), "not a valid cron"),
        ((10, "record_fire", {1, 2}), "not JSON-serialisable"),
        ((float("nan"), "record_fire", None), "finite"),
        (([1], "record_fire", None), "seconds, a datetime or a cron"),
    ]
    for args, message in bad_requests:
        with pytest.raises(InvalidScheduleError, match=message):
            await agent.schedule(*args)
    assert snapshot() == before
    assert [s.id for s in await agent.get_schedules()] == [kept.id]


async def test_internal_methods_cannot_be_called_through_a_handle(storage_dir: Path) -> None:
    """Schedule callbacks and access hooks are the agent's own: no Ray client may run them out of turn."""
    from agents.chat import Chat
    from tests.chat_agents_under_test import CrashableChat

    for cls in (Chat, CrashableChat):  # an override without the marker stays internal
        thread = get_agent(cls, "internal-1", storage_dir=storage_dir, create=False)
        for method in ("resume_tool_call", "recover_turn", "check_access", "set_owner", "build_tools", "purchase_tool"):
            with pytest.raises(AttributeError, match="that can be called"):
                await thread.invoke(method, {"tool_call_id": "x"})


async def test_only_what_a_class_marks_public_can_be_called_through_a_handle(storage_dir: Path) -> None:
    """Review hole 5: the remote surface is opt-in. Through a handle, without any token, a caller used to
    run the runtime's own methods on a chat thread: schedule a `set_owner` or a `resume_tool_call`, cancel
    the check of a pending approval, overwrite its state, re-run `on_start`, reach its model client."""
    from agents.chat import Chat

    thread = get_agent(Chat, "surface-1", storage_dir=storage_dir)
    refused = {
        "schedule": (0, "set_owner", {"owner": "mallory"}),
        "cancel_schedule": ("any",),
        "get_schedules": (),
        "set_state": ({},),
        "get_state": (),
        "on_start": (),
        "on_error": (RuntimeError(),),
        "llm": (),
        "jwt_verifier": (),
        "credential_store": (),
        "keeps_retrying": (None,),
    }
    for method, args in refused.items():
        with pytest.raises(AttributeError, match="only methods marked @public"):
            await thread.invoke(method, *args)
    assert not Chat.storage_path(storage_dir, "surface-1").exists()  # refused before the agent was activated

    plain = get_agent(PlainCounter, "surface-2", storage_dir=storage_dir)
    assert await plain.note("marked @public: a turn") == 1
    with pytest.raises(AttributeError):
        await plain.invoke("schedule", 0, "note", "x")


async def test_two_processes_migrating_one_shared_file_at_once_apply_each_step_once(tmp_path: Path) -> None:
    """A store the hosts share (the approval slots) is migrated by whichever host uses it first; two hosts
    doing it at once must not both run a step (the second failed with "table slots already exists", a 500
    on the first purchase of a fresh root). Two connections to one real file stand in for the two hosts."""
    from runtime.storage import AgentStorage

    steps = ["CREATE TABLE slots (k TEXT PRIMARY KEY);\nCREATE INDEX slots_k ON slots (k);\n"]
    first, second = AgentStorage(tmp_path / "shared.sqlite3"), AgentStorage(tmp_path / "shared.sqlite3")
    await first.open()
    await second.open()
    try:
        await asyncio.gather(first.migrate("shared", steps), second.migrate("shared", steps))
        assert await first.fetchone("SELECT version FROM _migrations WHERE scope = 'shared'") is not None
    finally:
        await first.close()
        await second.close()


async def test_hosts_opening_a_new_shared_file_at_once_all_open_it(tmp_path: Path) -> None:
    """The hosts open a store they share (the approval slots) when their first user needs it; several at
    once on a fresh file met "database is locked" (switching the file to WAL takes a lock SQLite's busy
    handler does not wait for), a 500 on a fresh root's first purchases. Connections of one process to one
    real file stand in for the hosts."""
    from runtime.storage import AgentStorage

    for attempt in range(5):
        stores = [AgentStorage(tmp_path / f"shared-{attempt}.sqlite3") for _ in range(8)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            assert [await store.fetchone("SELECT 1 FROM _kv LIMIT 1") for store in stores] == [None] * 8
        finally:
            await asyncio.gather(*(store.close() for store in stores))


def test_a_process_that_exits_with_an_agent_file_still_open_exits(tmp_path: Path) -> None:
    """A host retiring (or on a stopping cluster) with a store still open hung at exit for ever, a leaked
    process: aiosqlite's worker threads kept the interpreter waiting. Here a real process opens a file and
    exits without closing it."""
    import subprocess
    import sys

    script = (
        "import asyncio, sys\n"
        "from runtime.storage import AgentStorage\n"
        "kept = AgentStorage(sys.argv[1])  # as a host's stores are: referenced until the process ends\n"
        "asyncio.run(kept.open())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "open.sqlite3")], timeout=30, check=False)
    assert done.returncode == 0
