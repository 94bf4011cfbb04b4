"""Durable per-agent storage in PostgreSQL, for clusters: the same `self.storage` as the SQLite backend.

SQLite keeps one file per agent, and an agent's SQL sees only its own file. Here every agent of a class
shares that class's tables, in a schema of its own (`agents_<class>_<hash>`), and **row-level security**
keeps each agent to its own rows (`runtime.pg_agent_rows`): every table gets an owner column filled in
from the transaction's `agentrt.agent_id` setting, and a policy that lets a statement see and write only
its agent's rows. So an agent's SQL runs unchanged (`SELECT * FROM events` reads its own events), at
100,000 agents a class still has one set of tables (a schema per agent would put millions of relations in
the catalog), and a statement run without an agent id sees no rows and cannot write one (never
everyone's). For the same reason the runtime's role must be neither a superuser nor `BYPASSRLS`
(PostgreSQL lets those see through policies): `open()` refuses such a role.

- **Migrations** are per class, not per agent: the first activation of a class in any process applies
  the missing steps under an advisory lock, translated by `runtime.sql_dialect`; each table a step
  creates is then made per-agent (the owner column, the policy, its primary key, unique constraints
  and indexes led by it). Function steps (data migrations written against one agent's rows)
  cannot run class-wide and are refused. Foreign keys between agent tables are led by it too.
- **Fencing** is enforced by the database: an activation takes the next epoch in `_agents` (a row lock),
  and every write transaction first reads its row `FOR SHARE` and compares, so a stale activation's write
  fails with `StaleActivationError` and changes nothing, and a new activation's `take_epoch` waits for an
  old write in flight to finish.
- **Connections** come from one pool per process and event loop (`psycopg_pool`, `AGENT_STORAGE_POOL_SIZE`).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runtime.errors import StorageUnavailableError
from runtime.pg_agent_rows import AGENT_SETTING, EPOCH_SETTING, scope_new_tables
from runtime.pg_alarms import install as install_alarm_table
from runtime.pg_alarms import mark_asleep, track_schedules
from runtime.pg_pool import CONNECT_TIMEOUT, connection_pool
from runtime.sql_dialect import to_postgres, to_postgres_ddl
from runtime.storage import split_sql
from runtime.storage_api import Migration, Params, StorageAPI, StorageError, TransactionAPI

_BASE_TABLES = """
CREATE TABLE IF NOT EXISTS {schema}._agents (
    agent_id TEXT PRIMARY KEY, epoch BIGINT NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}._migrations (
    scope TEXT PRIMARY KEY, version BIGINT NOT NULL, applied_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}._kv (key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key));
"""


def class_schema(class_name: str) -> str:
    """The schema of an agent class: readable, and unique even for names that differ only in case."""
    slug = re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")[:40]
    return f"agents_{slug}_{hashlib.sha256(class_name.encode()).hexdigest()[:8]}"


class ConnectionLostError(StorageUnavailableError):
    """A pooled connection was found broken (or lost mid-statement): nothing of the call was written; a read
    can be tried again at once on another connection."""


_checks: dict[int, asyncio.Task[None]] = {}


def _check_idle_connections(pool: AsyncConnectionPool) -> None:
    """Have `pool` test its idle connections and replace the broken ones, once at a time, in the background
    (after a database restart every idle connection is broken; without this each would fail one call)."""
    running = _checks.get(id(pool))
    if running is None or running.done():
        task = asyncio.get_running_loop().create_task(pool.check())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed check: the next one retries
        _checks[id(pool)] = task


class PostgresTransaction(TransactionAPI):
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self.connection = conn
        """The transaction's connection, for the runtime's own statements (psycopg's syntax, untranslated)."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(to_postgres(sql), params or ())
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._conn.cursor() as cursor:
            await cursor.executemany(to_postgres(sql), list(rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        cursor = await self._conn.execute(to_postgres(sql), params or ())
        return list(await cursor.fetchall())


_prepared_classes: set[tuple[str, str]] = set()
"""(url, schema) whose schema and base tables this process has made sure of."""
_migrated: set[tuple[str, str, str, int]] = set()
"""(url, schema, scope, version) this process has seen applied."""
_tracking: set[tuple[str, str, str]] = set()
"""(url, schema, class path) whose `_schedules` this process has seen keep the alarm table."""


class PostgresAgentStorage(StorageAPI):
    """One agent's rows in its class's tables (see the module docstring)."""

    def __init__(self, url: str, class_name: str, agent_id: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.class_name = class_name
        self.agent_id = agent_id
        self.schema = class_schema(class_name)
        self.pool_size = pool_size
        self.path = f"{class_name}/{agent_id}"  # what errors name, as the file name does on SQLite
        self._pool: AsyncConnectionPool | None = None
        self._write_lock = asyncio.Lock()
        self._active: contextvars.ContextVar[PostgresTransaction | None] = contextvars.ContextVar(
            f"pgtx:{self.path}", default=None
        )
        self.epoch: int | None = None
        self.on_fenced: Any = None
        self.writes = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    async def open(self) -> PostgresAgentStorage:
        self._pool = await connection_pool(self.url, self.pool_size)
        if (self.url, self.schema) not in _prepared_classes:
            await self._prepare_class()
            _prepared_classes.add((self.url, self.schema))
        return self

    async def _prepare_class(self) -> None:
        async with self._connection() as conn, conn.transaction():
            role = await (
                await conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            ).fetchone()
            if role is not None and (role[0] or role[1]):
                raise StorageError(
                    "the PostgreSQL role of AGENT_STORAGE_URL is a superuser or has BYPASSRLS: row-level "
                    "security would not keep agents to their own rows; use an ordinary role"
                )
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.schema,))
            await conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema)))
            await conn.execute(  # the class's name, for operators' views (`runtime.status`)
                pgsql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    pgsql.Identifier(self.schema), pgsql.Literal(self.class_name)
                )
            )
            for statement in split_sql(_BASE_TABLES.format(schema=self.schema)):
                await conn.execute(statement)
            await scope_new_tables(conn, self.schema)
            await install_alarm_table(conn)

    async def close(self) -> None:
        self._pool = None  # the pool is the process's, shared by every agent

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; a database that cannot be reached (or a connection lost mid-transaction,
        which PostgreSQL rolls back) is `StorageUnavailableError`: nothing was written, retry later.
        Connections are not checked before each use (that would cost a round trip per call): the first one
        found broken (the database restarted) has the pool test and replace its other idle ones, in the
        background, and a read is simply tried again (`ConnectionLostError`)."""
        if self._pool is None:
            raise StorageError(f"storage {self.path} is not open")
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            async with self._pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            reason = f"{self.path}: the database cannot be reached ({type(exc).__name__})"
            if conn is not None and conn.broken:
                _check_idle_connections(self._pool)
                raise ConnectionLostError(reason) from None
            raise StorageUnavailableError(reason) from None

    async def erase(self) -> None:
        """Delete this agent's rows from every table of its class and its `_agents` row (its epoch: a new
        agent of this id starts over), in one transaction; then close."""
        async with self._connection() as conn, conn.transaction():
            await self._enter(conn)
            cursor = await conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname NOT IN ('_agents', '_migrations')",
                (self.schema,),
            )
            left = [table for (table,) in await cursor.fetchall()]
            for _ in range(len(left) + 1):  # a table others reference goes after them: in passes
                for table in list(left):
                    try:
                        async with conn.transaction():  # row-level security: only this agent's rows
                            name = pgsql.Identifier(self.schema, table)
                            await conn.execute(pgsql.SQL("DELETE FROM {}").format(name))
                        left.remove(table)
                    except psycopg.errors.ForeignKeyViolation:
                        continue
            if left:
                raise StorageError(f"{self.path}: could not erase {left} (references left)")
            await conn.execute("DELETE FROM _agents WHERE agent_id = %s", (self.agent_id,))
        await self.close()

    async def exists(self) -> bool:
        """Whether this agent was ever created (it took an epoch)."""
        row = await self.fetchone("SELECT 1 FROM _agents WHERE agent_id = ?", (self.agent_id,))
        return row is not None

    async def track_next_due(self, class_path: str) -> bool:
        """The class's `_schedules` table keeps the alarm table (`runtime.pg_alarms`): set up once per
        process and class."""
        if (self.url, self.schema, class_path) not in _tracking:
            async with self._connection() as conn, conn.transaction():
                await self._enter(conn)
                await track_schedules(conn, self.schema, class_path)
            _tracking.add((self.url, self.schema, class_path))
        self.keeps_next_due = True
        return True

    async def mark_asleep(self, probe: str | None = None) -> None:
        async with self.transaction() as tx:  # fenced like any write: a stale activation marks nothing
            await mark_asleep(tx.connection, self.schema, self.agent_id, probe)

    # -- transactions ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        current = self._active.get()
        if current is not None:
            yield current
            return
        async with self._write_lock:
            for attempt in range(self.pool_size + 1):  # a broken idle connection found before the body ran:
                begun = False  # nothing was sent, so the transaction starts again on another one
                try:
                    async with self._connection() as conn:
                        tx = PostgresTransaction(conn)
                        token = self._active.set(tx)
                        try:
                            async with conn.transaction():
                                await self._enter(conn)
                                if self.epoch is not None:
                                    await self._check_epoch(conn)
                                else:  # no fencing (a shared store): one writer at a time, as SQLite's lock
                                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.path,))
                                begun = True
                                yield tx
                        finally:
                            self.writes += begun
                            self._active.reset(token)
                    return
                except ConnectionLostError:
                    if begun or attempt == self.pool_size:
                        raise

    async def _enter(self, conn: psycopg.AsyncConnection[Any], *, local: bool = True) -> None:
        """Point the transaction (`local`) or, for a read outside one, the session at this agent's rows and
        its class's tables (and name the activation's epoch, `agentrt.epoch`, for audits). Every use of a
        pooled connection starts here, so a session setting left by the previous user is always replaced
        before a statement runs."""
        await conn.execute(
            "SELECT set_config(%s, %s, %s), set_config(%s, %s, %s), set_config('search_path', %s, %s)",
            (AGENT_SETTING, self.agent_id, local, EPOCH_SETTING, str(self.epoch or ""), local, self.schema, local),
        )

    async def take_epoch(self) -> int:
        """Become this agent's writer: take the next fencing epoch (every older activation is fenced off)."""
        self.epoch = None
        async with self.transaction() as tx:  # `_agents` is the runtime's own: its SQL goes untranslated
            cursor = await tx.connection.execute(
                "INSERT INTO _agents(agent_id, epoch, created_at) VALUES (%s, 1, %s) ON CONFLICT (agent_id) "
                "DO UPDATE SET epoch = _agents.epoch + 1 RETURNING epoch",
                (self.agent_id, time.time()),
            )
            row = await cursor.fetchone()
        assert row is not None
        self.epoch = int(row["epoch"])
        return self.epoch

    async def _check_epoch(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute("SELECT epoch FROM _agents WHERE agent_id = %s FOR SHARE", (self.agent_id,))
        row = await cursor.fetchone()
        self.refuse_if_stale(self.path, int(row[0]) if row else 0)

    def in_transaction(self) -> bool:
        return self._active.get() is not None

    # -- reads -----------------------------------------------------------------------------------------
    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        current = self._active.get()
        if current is not None:
            return await current.fetchall(sql, params)
        for attempt in range(self.pool_size + 1):  # each broken idle connection costs one try, no more
            try:
                async with self._connection() as conn, conn.pipeline():  # the agent's setting and the query
                    await self._enter(conn, local=False)
                    cursor = await conn.execute(to_postgres(sql), params or ())
                    return list(await cursor.fetchall())
            except ConnectionLostError:
                if attempt == self.pool_size:
                    raise
        raise AssertionError("unreachable")

    async def fetchone(self, sql: str, params: Params = ()) -> Any | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    # -- migrations ------------------------------------------------------------------------------------
    async def migrate(self, scope: str, migrations: Sequence[Migration]) -> int:
        """Apply the class's missing migrations of `scope` (once per class, under an advisory lock)."""
        if (self.url, self.schema, scope, len(migrations)) in _migrated:
            return 0
        applied_now = 0
        async with self._connection() as conn, conn.transaction():
            await self._enter(conn)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.schema}:{scope}",))
            row = await (await conn.execute("SELECT version FROM _migrations WHERE scope = %s", (scope,))).fetchone()
            applied = int(row[0]) if row else 0
            if applied > len(migrations):
                raise StorageError(
                    f"{self.class_name}: scope {scope!r} is at version {applied} but only {len(migrations)} "
                    "migrations are known (code older than the data?)"
                )
            for version in range(applied + 1, len(migrations) + 1):
                step = migrations[version - 1]
                if callable(step):
                    raise StorageError(
                        f"{self.class_name}: migration {version} of {scope!r} is a function; on PostgreSQL "
                        "migrations run once per class, so they must be SQL"
                    )
                for statement in split_sql(step) if isinstance(step, str) else step:
                    await conn.execute(to_postgres_ddl(statement))
                await scope_new_tables(conn, self.schema)
                await conn.execute(
                    "INSERT INTO _migrations(scope, version, applied_at) VALUES (%s, %s, %s) ON CONFLICT (scope) "
                    "DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at",
                    (scope, version, time.time()),
                )
                applied_now += 1
        _migrated.add((self.url, self.schema, scope, len(migrations)))
        return applied_now
