"""The storage contract, on both backends: one SQLite file per agent (the embedded default) and
PostgreSQL (for clusters; a real throwaway server). The same agent code, written once in SQLite's style,
keeps the same promises on each: key/value and raw SQL, migrations, atomic transactions, each agent's rows
its own, and fencing (a stale activation's writes fail and change nothing)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import StaleActivationError
from runtime.storage import AgentStorage
from runtime.storage_api import StorageError
from tests.postgres import PostgresServer

EVENTS = [
    """
    CREATE TABLE events (id TEXT PRIMARY KEY, value INTEGER NOT NULL, at REAL NOT NULL);
    CREATE INDEX events_at ON events(at);
    """,
    "ALTER TABLE events ADD COLUMN note TEXT",
]


Opener = Callable[[str], Any]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the storage of agent `agent_id` of one class, on the backend under test."""
    opened: list[Any] = []
    cls = f"Events{time.monotonic_ns()}"  # a class of its own per test: PostgreSQL's tables are per class

    async def open_one(agent_id: str) -> Any:
        if request.param == "sqlite":
            storage = AgentStorage(tmp_path / cls / f"{agent_id}.sqlite3")
        else:
            from runtime.storage_pg import PostgresAgentStorage

            storage = PostgresAgentStorage(request.getfixturevalue("postgres").url, cls, agent_id)
        await storage.open()
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        await storage.close()
    if request.param == "postgres":
        from runtime.pg_pool import close_pools

        await close_pools()


async def test_key_value_round_trips(open_storage: Opener) -> None:
    storage = await open_storage("a-1")
    await storage.put("user:1", {"name": "Ada", "tags": ["x"]})
    await storage.put("user_2", [1, 2.5, None])
    await storage.put("user%3", "percent")
    assert await storage.get("user:1") == {"name": "Ada", "tags": ["x"]}
    assert await storage.get("missing", "default") == "default"
    assert await storage.setdefault("user:1", "other") == {"name": "Ada", "tags": ["x"]}
    assert list(await storage.list("user_")) == ["user_2"]  # `_` and `%` in a prefix are literal
    assert list(await storage.list("user%")) == ["user%3"]
    assert await storage.delete("user:1") is True and await storage.delete("user:1") is False


async def test_migrations_and_raw_sql_keep_types_and_run_once(open_storage: Opener) -> None:
    storage = await open_storage("a-1")
    await storage.migrate("Events", EVENTS)
    await storage.migrate("Events", EVENTS)  # applied once
    now = time.time()
    await storage.execute("INSERT INTO events(id, value, at, note) VALUES (?, ?, ?, ?)", ("e1", 2**40, now, "50%"))
    await storage.execute(
        "INSERT INTO events(id, value, at) VALUES (:id, :value, :at) "
        "ON CONFLICT(id) DO UPDATE SET value = events.value + excluded.value",
        {"id": "e1", "value": 1, "at": now},
    )
    row = await storage.fetchone("SELECT value, at, note FROM events WHERE id = ? AND note LIKE '50%'", ("e1",))
    assert (row["value"], row[1], row["note"]) == (2**40 + 1, now, "50%")  # 8-byte ints and floats, exactly


async def test_each_agent_sees_and_writes_only_its_own_rows(open_storage: Opener) -> None:
    alice, bob = await open_storage("alice"), await open_storage("bob")
    for storage in (alice, bob):
        await storage.migrate("Events", EVENTS)
    await alice.execute("INSERT INTO events(id, value, at) VALUES ('same-id', 1, 0)")
    await bob.execute("INSERT INTO events(id, value, at) VALUES ('same-id', 2, 0)")  # its own key space
    await alice.put("k", "alice's")
    assert [r["value"] for r in await alice.fetchall("SELECT value FROM events")] == [1]
    assert await bob.execute("DELETE FROM events WHERE value = 1") == 0  # cannot touch alice's row
    assert await bob.get("k") is None
    assert [r["value"] for r in await bob.fetchall("SELECT value FROM events")] == [2]


async def test_a_transaction_is_all_or_nothing(open_storage: Opener) -> None:
    storage = await open_storage("a-1")
    await storage.migrate("Events", EVENTS)
    with pytest.raises(RuntimeError, match="midway"):
        async with storage.transaction() as tx:
            await tx.execute("INSERT INTO events(id, value, at) VALUES ('e1', 1, 0)")
            await tx.put("k", 1)
            assert await storage.get("k") == 1  # the transaction sees its own writes
            raise RuntimeError("midway")
    assert await storage.fetchall("SELECT * FROM events") == [] and await storage.get("k") is None


async def test_a_stale_activation_cannot_write(open_storage: Opener) -> None:
    old = await open_storage("a-1")
    assert await old.take_epoch() == 1
    await old.put("k", "old")
    fenced: list[bool] = []
    old.on_fenced = lambda: fenced.append(True)
    new = await open_storage("a-1")  # the agent activated again elsewhere
    assert await new.take_epoch() == 2
    with pytest.raises(StaleActivationError):
        await old.put("k", "stale")
    assert fenced == [True]
    assert await new.get("k") == "old"
    await new.put("k", "new")
    assert await new.get("k") == "new"


async def test_postgres_refuses_a_role_that_sees_through_row_level_security(postgres: PostgresServer) -> None:
    from runtime.pg_pool import close_pools
    from runtime.storage_pg import PostgresAgentStorage

    try:
        with pytest.raises(StorageError, match="superuser or has BYPASSRLS"):
            await PostgresAgentStorage(postgres.admin_url, f"Refused{time.monotonic_ns()}", "a-1").open()
    finally:
        await close_pools()


async def test_postgres_refuses_a_function_migration(open_storage: Opener, request: pytest.FixtureRequest) -> None:
    storage = await open_storage("a-1")
    if type(storage).__name__ != "PostgresAgentStorage":
        pytest.skip("SQLite runs function migrations per agent file")

    async def backfill(tx: Any) -> None: ...

    with pytest.raises(StorageError, match="must be SQL"):
        await storage.migrate("Data", [backfill])


async def test_the_chat_tables_and_their_foreign_key_hold_per_agent(open_storage: Opener) -> None:
    from agents.thread_store import CHAT_MIGRATIONS, ThreadStore

    alice, bob = await open_storage("alice"), await open_storage("bob")
    for storage in (alice, bob):
        await storage.migrate("Chat", CHAT_MIGRATIONS)
        store = ThreadStore(storage)
        await store.add_message("user", "buy 1 MSFT", message_id="m-1")  # the same message id in each thread
        await store.add_assistant(None, [{"id": "call-1", "name": "buy_stock", "arguments": "{}"}])
    (call,) = await ThreadStore(alice).calls()
    await ThreadStore(alice).finish_call(call, "Purchased")
    assert [c.state for c in await ThreadStore(bob).calls()] == ["call"]  # bob's call untouched
    assert [m.content for m in await ThreadStore(alice).messages_after(0)][-1] == "Purchased"
    with pytest.raises(Exception, match="(?i)foreign key"):  # a call of a message the thread does not have
        await bob.execute(
            "INSERT INTO tool_calls(id, message_id, position, name, arguments, state, created_at, updated_at) "
            "VALUES ('c', 'm-1-of-nobody', 0, 'x', '{}', 'call', 0, 0)"
        )


async def test_a_calls_retry_is_kept_apart_from_what_it_waits_for_and_old_rows_read_the_same(
    open_storage: Opener,
) -> None:
    """`ToolCall.retry` (a run to come) and `interrupt` (what the call waits for) are two columns; a row
    written before `retry` existed, with the retry inside `interrupt`, reads as a retry too."""
    from agents.messages import ToolRetry
    from agents.thread_store import CHAT_MIGRATIONS, ThreadStore

    storage = await open_storage("retries")
    await storage.migrate("Chat", CHAT_MIGRATIONS)
    store = ThreadStore(storage)
    await store.add_message("user", "buy 1 MSFT", message_id="m-1")
    calls = [{"id": f"call-{n}", "name": "buy_stock", "arguments": "{}"} for n in (1, 2)]
    await store.add_assistant(None, calls)
    retry = ToolRetry(attempt=2, next_attempt_at=123.0, reason="checkout down", outcome_unknown=True)
    await store.set_call_state("call-1", "running", interrupt={"confirmation": "approved"}, retry=retry)
    old = '{"retrying": true, "attempt": 3, "next_attempt_at": 9.0, "reason": "503", "outcome_unknown": false}'
    await storage.execute("UPDATE tool_calls SET state = 'running', interrupt = ? WHERE id = 'call-2'", (old,))
    first, second = await store.calls()
    assert first.retry == retry and first.interrupt == {"confirmation": "approved"}
    assert second.retry == ToolRetry(attempt=3, next_attempt_at=9.0, reason="503") and second.interrupt is None
    last = await store.last_seq()  # and what a turn looks up before it starts, in one read
    first_seq = int((await storage.fetchone("SELECT seq FROM messages WHERE id = 'm-1'"))["seq"])
    assert await store.before_turn("m-1") == (last, (first_seq, "user", "buy 1 MSFT"))
    assert await store.before_turn("never-sent") == (last, None)


async def test_the_models_window_and_the_summary_read_the_same_on_both_backends(open_storage: Opener) -> None:
    """The window reads the newest turns a page at a time, whole blocks (a call with its result), the calls
    still pending before it, and a summary is written once per span it covers."""
    from agents.model_context import bounded_context, preamble
    from agents.thread_store import CHAT_MIGRATIONS, ThreadStore

    storage = await open_storage("long")
    await storage.migrate("Chat", CHAT_MIGRATIONS)
    store = ThreadStore(storage)
    await store.add_message("user", "buy 3 NVDA")
    await store.add_assistant(None, [{"id": "early", "name": "buy_stock", "arguments": "{}"}])
    await store.set_call_state("early", "awaiting-confirmation")
    for n in range(200):
        await store.add_message("user", f"question {n}")
        if n % 10 == 0:
            asked = await store.add_assistant(
                None, [{"id": f"price-{n}", "name": "get_stock_price", "arguments": "{}"}]
            )
            await store.finish_call(asked.tool_calls[0], "25.0")
        await store.add_message("assistant", f"answer {n}")

    window = bounded_context(preamble("system", None, []), await store.blocks_newest_first(0, 2_000), 2_000)
    assert window.first_seq is not None and 300 < window.first_seq < await store.last_seq()
    assert window.size <= 2_000 and window.messages[-1]["content"] == "answer 199"
    tools = [m for m in window.messages if m["role"] == "tool"]
    assert tools and all(m["content"] == "25.0" for m in tools)
    assert [c.id for c in await store.unfinished_calls_before(window.first_seq)] == ["early"]

    # the next turn's window, from the blocks kept since the last one, is what a fresh read gives
    asked = await store.add_assistant(None, [{"id": "late", "name": "get_stock_price", "arguments": "{}"}])
    await store.add_message("user", "and now?")
    await store.finish_call(asked.tool_calls[0], "26.0")  # resolved after the thread moved on: replayed
    await store.set_call_state("price-190", "running")  # an older block's call changes
    kept = bounded_context(preamble("system", None, []), await store.blocks_newest_first(0, 2_000), 2_000)
    fresh = ThreadStore(storage)
    again = bounded_context(preamble("system", None, []), await fresh.blocks_newest_first(0, 2_000), 2_000)
    assert kept.messages == again.messages and kept.messages[-1]["content"] == "26.0"
    # a larger window reaches past what was kept, the whole thread, a summary's end: as a fresh read gives
    for after_seq, budget in ((0, 6_000), (0, 100_000), (40, 6_000), (40, 3_000)):
        await store.add_message("user", f"more {after_seq} {budget}")
        kept_blocks = await store.blocks_newest_first(after_seq, budget)
        fresh_blocks = await ThreadStore(storage).blocks_newest_first(after_seq, budget)
        kept = bounded_context(preamble("system", None, []), kept_blocks, budget)
        again = bounded_context(preamble("system", None, []), fresh_blocks, budget)
        assert kept.messages == again.messages and kept.first_seq == again.first_seq
        assert (sum(b.size for b in kept_blocks) < budget) == (sum(b.size for b in fresh_blocks) < budget)

    oldest = await store.blocks_oldest_first(0, window.first_seq, 500)
    assert oldest[0].seq == 1 and sum(b.size for b in oldest) <= 500
    assert await store.add_summary(oldest[-1].seq, "summary one", len(oldest)) is True
    assert await store.add_summary(oldest[-1].seq, "summary again", len(oldest)) is False  # once per span
    assert await store.summary_in_use() == (oldest[-1].seq, "summary one")


PARENT_CHILD = [
    """
    CREATE TABLE parents (id TEXT PRIMARY KEY);
    CREATE TABLE children (id TEXT PRIMARY KEY, parent TEXT NOT NULL REFERENCES parents(id));
    """
]


async def test_erase_removes_one_agents_data_and_no_one_elses(open_storage: Opener) -> None:
    """What deleting an agent leaves: nothing of it (rows referenced by others included, its epoch gone), and
    another agent of the class as it was."""
    gone, kept = await open_storage("a-gone"), await open_storage("a-kept")
    for storage in (gone, kept):
        await storage.take_epoch()
        await storage.migrate("Family", PARENT_CHILD)
        await storage.put("k", "v")
        await storage.execute("INSERT INTO parents(id) VALUES ('p')")
        await storage.execute("INSERT INTO children(id, parent) VALUES ('c', 'p')")
    await gone.erase()
    if isinstance(gone, AgentStorage):
        assert list(Path(gone.path).parent.glob("a-gone.sqlite3*")) == []  # the file and its journals
    again = await open_storage("a-gone")
    if not isinstance(again, AgentStorage):
        assert await again.exists() is False  # no epoch left: the id is unknown again
    await again.take_epoch()
    await again.migrate("Family", PARENT_CHILD)
    assert await again.get("k") is None and await again.fetchall("SELECT * FROM children") == []
    assert await kept.get("k") == "v" and len(await kept.fetchall("SELECT * FROM children")) == 1
