"""Durable per-agent storage: one SQLite file (WAL) behind aiosqlite (the embedded default backend; the
agent-facing API is `runtime.storage_api`, PostgreSQL's backend `runtime.storage_pg`).

Two connections: a writer, guarded by a lock so that concurrent coroutines never interleave inside one
transaction, and a reader that sees only committed data, so reads never wait behind a slow turn. A write
returns only after its COMMIT, which is what "acknowledged" means in the durability guarantee.

Inside `async with storage.transaction():` every write (KV or SQL) made by the same task joins that one
transaction; reads made there go through the writer so they see the transaction's own changes.

Single writer, enforced (fencing): an activation takes the next epoch of its file (`take_epoch`), and
every write transaction first checks, under SQLite's write lock, that the file's epoch is still its own.
After a newer activation started (Ray re-created the agent elsewhere while the old process still runs,
cut off but alive), the old one's writes fail with `StaleActivationError` and change nothing. The check is
one primary-key read per write transaction.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from runtime.backoff import exponential_delay
from runtime.private_files import private_file
from runtime.storage_api import (
    EPOCH_KEY,
    Migration,
    Params,
    StorageAPI,
    StorageError,
    TransactionAPI,
    decode,
    to_json,
)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another connection's lock (SQLite's busy handler)."""

_KV_SCHEMA = """
CREATE TABLE IF NOT EXISTS _kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _migrations (
    scope TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at REAL NOT NULL
);
"""


def split_sql(script: str) -> list[str]:
    """Split SQL text into complete statements (aware of quotes and triggers via sqlite3)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and sqlite3.complete_statement(buffer + ";"):
        statements.append(buffer.strip())
    elif buffer.strip():
        raise StorageError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return statements


async def _rows(conn: aiosqlite.Connection, sql: str, params: Params) -> list[sqlite3.Row]:
    """The rows of one query, in one round trip to the connection's thread (execute and fetch together:
    each trip is a hand-off between threads, and a chat turn makes dozens)."""
    return list(await conn.execute_fetchall(sql, params))


class Transaction(TransactionAPI):
    """Write access inside one open transaction (see `AgentStorage.transaction`)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows changed."""
        cursor = await self._conn.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return await _rows(self._conn, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await _rows(self._conn, sql, params)
        return rows[0] if rows else None


class AgentStorage(StorageAPI):
    """One agent's SQLite file: a small KV API, raw SQL, transactions and per-scope migrations."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", journal: str = "wal") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.journal = journal
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock: Any = None
        self._active: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
            f"tx:{self.path}", default=None
        )
        self.epoch: int | None = None
        """This activation's fencing epoch (None: unfenced, e.g. a tool's own store)."""
        self.on_fenced: Callable[[], None] | None = None
        """Called once when a write finds a newer epoch (the agent then leaves its host)."""
        self.writes = 0
        """How many write transactions have ended. The activation is its file's only writer (fencing), so
        a read taken while this held one value is current for as long as it holds it (`ReadCache`)."""

    # -- lifecycle -------------------------------------------------------------------------------------
    async def open(self) -> AgentStorage:
        private_file(self.path)
        self._write_lock = asyncio.Lock()
        self._writer = writer = await self._connect()

        async def prepare() -> None:
            mode = await writer.execute(f"PRAGMA journal_mode={'WAL' if self.journal == 'wal' else 'DELETE'}")
            await mode.close()  # its row unread, the statement would keep a read lock on the file
            await writer.executescript(_KV_SCHEMA)

        await while_locked(prepare, BUSY_TIMEOUT_MS / 1000)  # a file the hosts share may be opened at once
        self._reader = await self._connect("PRAGMA query_only=ON")
        return self

    async def _connect(self, *more_pragmas: str) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing commits behind our back. The
        # settings go in one script: each call is a hop to the connection's thread (an activation's cost).
        conn = await connect_sqlite(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        pragmas = [f"PRAGMA synchronous={self.synchronous}", f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}"]
        await conn.executescript(";\n".join([*pragmas, "PRAGMA foreign_keys=ON", *more_pragmas]) + ";")
        return conn

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def erase(self) -> None:
        """Close, then delete the agent's file with its journal files."""
        await self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def _require_open(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._writer is None or self._reader is None:
            raise StorageError(f"storage {self.path.name} is not open")
        return self._writer, self._reader

    # -- transactions ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One atomic unit of writes: committed when the block ends, rolled back if it raises.

        Nested use in the same task joins the outer transaction.
        """
        current = self._active.get()
        if current is not None:
            yield current
            return
        writer, _ = self._require_open()
        async with self._write_lock:
            tx = Transaction(writer)
            token = self._active.set(tx)
            try:
                # Inside the try: a task cancelled while BEGIN is queued still rolls it back. aiosqlite runs
                # a cancelled call anyway, in queue order, so ROLLBACK/COMMIT are shielded and land after it.
                await writer.execute("BEGIN IMMEDIATE")
                if self.epoch is not None:
                    await self._check_epoch(writer)
                yield tx
            except BaseException:
                await asyncio.shield(_rollback(writer))
                raise
            else:
                await asyncio.shield(writer.execute("COMMIT"))
            finally:
                self.writes += 1
                self._active.reset(token)

    async def take_epoch(self) -> int:
        """Become the file's writer: take the next fencing epoch (every older activation is fenced off)."""
        self.epoch = None
        async with self.transaction() as tx:
            row = await tx.fetchone("SELECT value FROM _kv WHERE key = ?", (EPOCH_KEY,))
            epoch = (int(json.loads(row["value"])) if row else 0) + 1
            await tx.put(EPOCH_KEY, epoch)
        self.epoch = epoch
        return epoch

    async def _check_epoch(self, writer: aiosqlite.Connection) -> None:
        rows = await _rows(writer, "SELECT value FROM _kv WHERE key = ?", (EPOCH_KEY,))
        row = rows[0] if rows else None
        self.refuse_if_stale(self.path.name, int(json.loads(row["value"])) if row else 0)

    def in_transaction(self) -> bool:
        """Whether the calling task is inside `transaction()` (its reads see its own uncommitted writes)."""
        return self._active.get() is not None

    def _read_conn(self) -> aiosqlite.Connection:
        writer, reader = self._require_open()
        return writer if self._active.get() is not None else reader

    # -- reads ---------------------------------------------------------------------------------------
    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Read rows from committed data (or the caller's open transaction)."""
        return await _rows(self._read_conn(), sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await _rows(self._read_conn(), sql, params)
        return rows[0] if rows else None

    # -- migrations ------------------------------------------------------------------------------------
    async def migrate(self, scope: str, migrations: Sequence[Migration]) -> int:
        """Apply the migrations of `scope` not yet applied, all in one transaction; return how many.

        A migration's index in the list is its version: never reorder or edit applied ones, only append.
        One transaction: a new file gets its whole schema in one write (a new thread's file took a
        transaction per step before, each with its own checks), and a step that fails leaves the file as
        it was, to be migrated again whole at the next start.
        """
        row = await self.fetchone("SELECT version FROM _migrations WHERE scope = ?", (scope,))
        applied = int(row["version"]) if row else 0
        if applied > len(migrations):
            raise StorageError(
                f"{self.path.name}: scope {scope!r} is at version {applied} but only "
                f"{len(migrations)} migrations are known (code older than the data?)"
            )
        if applied == len(migrations):
            return 0
        async with self.transaction() as tx:
            row = await tx.fetchone("SELECT version FROM _migrations WHERE scope = ?", (scope,))
            current = int(row["version"]) if row else 0  # another process may have migrated it meanwhile
            for step in migrations[current:]:
                if callable(step):
                    await step(tx)
                else:
                    for statement in split_sql(step) if isinstance(step, str) else step:
                        await tx.execute(statement)
            if current < len(migrations):
                await tx.execute(
                    "INSERT INTO _migrations(scope, version, applied_at) VALUES (?, ?, ?) ON CONFLICT(scope) "
                    "DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at",
                    (scope, len(migrations), time.time()),
                )
        return len(migrations) - applied


async def connect_sqlite(path: Path, **options: Any) -> aiosqlite.Connection:
    """An aiosqlite connection whose worker thread does not keep its process alive. aiosqlite runs each
    connection in a non-daemon thread, so one nobody closed (a host retiring or its cluster stopping with
    a store still open) hung the interpreter's exit for ever: a leaked process holding its memory. SQLite
    is crash-safe, so a connection cut off at exit is no worse than a crash."""
    pending = aiosqlite.connect(path, **options)
    worker = getattr(pending, "_thread", None)  # aiosqlite starts it when awaited; it offers no option
    if worker is not None and not worker.is_alive():
        worker.daemon = True
    return await pending


async def while_locked(step: Callable[[], Awaitable[T]], timeout: float) -> T:
    """`step()`, tried again after a short pause for as long as `timeout` while another connection holds a
    lock SQLite's busy handler does not wait for: switching a file's journal mode takes an exclusive lock,
    so several processes opening a new file at once get "database is locked" at once instead of waiting."""
    deadline = time.monotonic() + timeout
    for failures in itertools.count(1):
        try:
            return await step()
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(exponential_delay(failures, 0.005, 0.1))
    raise AssertionError("unreachable")


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Roll back if a transaction is open (a BEGIN that never ran leaves none to roll back)."""
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "no transaction is active" not in str(exc):
            raise


__all__ = [
    "EPOCH_KEY",
    "AgentStorage",
    "connect_sqlite",
    "Migration",
    "StorageError",
    "Transaction",
    "decode",
    "split_sql",
    "to_json",
]
