"""The alarm table on PostgreSQL: every agent's next due time, kept by the database, claimed by schedulers.

On SQLite the alarm scheduler keeps an index beside the agents' files, which an agent must tell of every
change (`runtime.alarm_index`). Here there is no second copy to drift or lose: a statement-level trigger
on each class's `_schedules` table writes the agent's earliest pending due time into
`agentrt_runtime.alarms` **in the same transaction** as the schedule change that moved it (so it is as
fenced as the change: a stale activation's write rolls back both). Schedulers find due agents with
`FOR UPDATE SKIP LOCKED` and lease them (`lease_until`): several schedulers share the work without waking
an agent twice, and an alarm claimed by a scheduler that died is claimed again once its lease ends.
A live agent's own timer fires its schedules, so a row is claimed only a grace after its due time, unless
its agent went to sleep (`asleep`, set as it leaves memory, cleared by its next schedule change): then at
its due time exactly.

The table obeys row-level security like the agents' own tables: a transaction sees and writes only the
row of its own agent (`agentrt.agent_id`) in its own class schema (the `search_path` its storage set);
the schedulers work as the operator (`*`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql

from runtime.pg_agent_rows import AGENT_SETTING, OPERATOR
from runtime.pg_pool import connection_pool

SCHEMA = "agentrt_runtime"

_TABLE = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.alarms (
    class_schema TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    class_path TEXT NOT NULL,
    next_due DOUBLE PRECISION NOT NULL,
    parked_error TEXT,
    lease_until DOUBLE PRECISION,
    lease_owner TEXT,
    PRIMARY KEY (class_schema, agent_id)
);
ALTER TABLE {SCHEMA}.alarms ADD COLUMN IF NOT EXISTS asleep BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE {SCHEMA}.alarms ADD COLUMN IF NOT EXISTS probe TEXT;
CREATE INDEX IF NOT EXISTS alarms_due ON {SCHEMA}.alarms (next_due) WHERE parked_error IS NULL;
ALTER TABLE {SCHEMA}.alarms ENABLE ROW LEVEL SECURITY;
ALTER TABLE {SCHEMA}.alarms FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_alarm ON {SCHEMA}.alarms;
CREATE POLICY own_alarm ON {SCHEMA}.alarms
    USING (current_setting('{AGENT_SETTING}', true) = '{OPERATOR}'
           OR (agent_id = current_setting('{AGENT_SETTING}', true) AND class_schema = current_schema()))
    WITH CHECK (current_setting('{AGENT_SETTING}', true) = '{OPERATOR}'
           OR (agent_id = current_setting('{AGENT_SETTING}', true) AND class_schema = current_schema()));
CREATE OR REPLACE FUNCTION {SCHEMA}.track_next_due() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    agent TEXT := current_setting('{AGENT_SETTING}', true);
    due DOUBLE PRECISION;
BEGIN
    IF agent IS NULL OR agent = '' OR agent = '{OPERATOR}' THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT MIN(due_at) FROM %I._schedules WHERE status = ''pending''', TG_TABLE_SCHEMA) INTO due;
    IF due IS NULL THEN
        DELETE FROM {SCHEMA}.alarms WHERE class_schema = TG_TABLE_SCHEMA AND agent_id = agent;
    ELSE
        INSERT INTO {SCHEMA}.alarms AS a (class_schema, agent_id, class_path, next_due)
        VALUES (TG_TABLE_SCHEMA, agent, TG_ARGV[0], due)
        ON CONFLICT (class_schema, agent_id) DO UPDATE
            SET next_due = excluded.next_due, class_path = excluded.class_path, parked_error = NULL, asleep = false,
                probe = NULL
            WHERE a.next_due IS DISTINCT FROM excluded.next_due OR a.class_path IS DISTINCT FROM excluded.class_path
               OR a.asleep;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION {SCHEMA}.track_next_due() IS '{{version}}';
"""

VERSION = "4"
"""Of the table, its policy and the trigger function: `install` does nothing where this one is in place."""

POLL_SECONDS = 1.0
"""The longest a scheduler sleeps between looks at the table (it sleeps less when an alarm is due sooner)."""

CLAIM_BATCH = 100
"""At most this many due alarms per claim (the rest stay for the next claim, or another scheduler)."""


async def install(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the alarm table, its policy and the trigger function (idempotent; inside the caller's
    transaction, under an advisory lock so concurrent processes do not race on the catalog)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA,))
    cursor = await conn.execute(
        "SELECT obj_description(to_regprocedure(%s), 'pg_proc')", (f"{SCHEMA}.track_next_due()",)
    )
    installed = await cursor.fetchone()
    if installed is not None and installed[0] == VERSION:
        return  # no DDL on a live table: it would block every agent's schedule writes for a moment
    for statement in _statements(_TABLE.replace("{version}", VERSION)):
        await conn.execute(statement)


async def track_schedules(conn: psycopg.AsyncConnection[Any], schema: str, class_path: str) -> None:
    """Make `schema._schedules` keep its agents' rows of the alarm table, and fill in the rows of agents
    whose schedules were written before the trigger existed (inside the caller's transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{schema}:alarms",))
    await conn.execute(
        pgsql.SQL(
            "CREATE OR REPLACE TRIGGER agentrt_next_due AFTER INSERT OR UPDATE OR DELETE ON {t} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {f}({p})"
        ).format(
            t=pgsql.Identifier(schema, "_schedules"),
            f=pgsql.Identifier(SCHEMA, "track_next_due"),
            p=pgsql.Literal(class_path),
        )
    )
    await conn.execute("SELECT set_config(%s, %s, true)", (AGENT_SETTING, OPERATOR))
    await conn.execute(
        pgsql.SQL(
            "INSERT INTO {a} (class_schema, agent_id, class_path, next_due) "
            "SELECT {s}, _agentrt_agent, {p}, MIN(due_at) FROM {t} WHERE status = 'pending' GROUP BY _agentrt_agent "
            "ON CONFLICT (class_schema, agent_id) DO NOTHING"
        ).format(
            a=pgsql.Identifier(SCHEMA, "alarms"),
            s=pgsql.Literal(schema),
            p=pgsql.Literal(class_path),
            t=pgsql.Identifier(schema, "_schedules"),
        )
    )


async def mark_asleep(conn: psycopg.AsyncConnection[Any], schema: str, agent_id: str, probe: str | None = None) -> None:
    """The agent is leaving memory: its alarm is now the only way back, due at its time exactly, and carries
    `probe` (`runtime.alarm_probes`; inside the agent's own transaction)."""
    await conn.execute(
        f"UPDATE {SCHEMA}.alarms SET asleep = true, probe = %s WHERE class_schema = %s AND agent_id = %s "
        "AND (NOT asleep OR probe IS DISTINCT FROM %s)",
        (probe, schema, agent_id, probe),
    )


def _statements(script: str) -> list[str]:
    """`script` cut at the `;` ending a line outside the function body (`$$ ... $$`)."""
    statements, current, in_body = [], [], False
    for line in script.splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    return [s for s in statements if s]


AlarmKey = tuple[str, str]
"""(class path, agent id)."""


class AlarmTable:
    """A scheduler's side of the table: claim what is due, then release, retry later, forget or park it.

    `owner` names this scheduler in its leases; a lease held past `lease_seconds` (its scheduler died, or
    a wake-up hangs) is anyone's to claim again, so an alarm is never lost, at worst woken twice (an
    agent's due schedules run at least once, and a second wake-up finds nothing due)."""

    def __init__(self, url: str, owner: str, *, grace: float, lease_seconds: float, batch: int = CLAIM_BATCH) -> None:
        self.url = url
        self.batch = batch
        self.owner = owner
        self.grace = grace
        self.lease_seconds = lease_seconds
        self._pool: Any = None
        self._poked = asyncio.Event()

    async def open(self) -> None:
        self._pool = await connection_pool(self.url, 4)
        async with self._pool.connection() as conn, conn.transaction():
            await install(conn)
        # a restarted scheduler keeps its owner name: what its previous life had claimed is free again now,
        # not only once those leases run out
        await self._run(
            f"UPDATE {SCHEMA}.alarms SET lease_until = NULL, lease_owner = NULL WHERE lease_owner = %s", (self.owner,)
        )

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT set_config(%s, %s, true)", (AGENT_SETTING, OPERATOR))
            cursor = await conn.execute(sql, params)
            return list(await cursor.fetchall()) if cursor.description else []

    def poke(self) -> None:
        """Look at the table now (something may have become due)."""
        self._poked.set()

    async def claim(self, limit: int | None = None) -> list[tuple[AlarmKey, float]]:
        """Wait until some alarms are due (their time plus the grace a live agent's own timer gets), lease
        them to this scheduler and return them (at most `limit`, and at most `batch`)."""
        most = min(self.batch, limit or self.batch)
        while True:
            now = time.time()
            rows = await self._run(
                f"UPDATE {SCHEMA}.alarms a SET lease_until = %s, lease_owner = %s FROM ("
                f"  SELECT class_schema, agent_id FROM {SCHEMA}.alarms WHERE parked_error IS NULL AND next_due <= %s"
                "   AND (asleep OR next_due <= %s) AND (lease_until IS NULL OR lease_until <= %s)"
                "   ORDER BY next_due LIMIT %s FOR UPDATE SKIP LOCKED"
                ") due WHERE a.class_schema = due.class_schema AND a.agent_id = due.agent_id "
                "RETURNING a.class_path, a.agent_id, a.next_due",
                (now + self.lease_seconds, self.owner, now, now - self.grace, now, most),
            )
            if rows:
                return [((row[0], row[1]), float(row[2])) for row in rows]
            soonest = await self._run(  # the next fire time within the poll interval (asleep: no grace)
                f"SELECT MIN(CASE WHEN asleep THEN next_due ELSE next_due + %s END) FROM {SCHEMA}.alarms "
                "WHERE parked_error IS NULL AND lease_until IS NULL AND next_due <= %s",
                (self.grace, now + POLL_SECONDS),
            )
            wait = POLL_SECONDS
            if soonest and soonest[0][0] is not None:
                wait = min(wait, max(0.0, float(soonest[0][0]) - time.time()))
            self._poked.clear()
            try:
                await asyncio.wait_for(self._poked.wait(), timeout=max(wait, 0.01))
            except TimeoutError:
                pass

    async def record(self, key: AlarmKey, due: float | None, asleep: bool = False, probe: str | None = None) -> None:
        """Nothing to do: the agent's own transactions wrote its row (and marked it asleep, with its probe)."""

    async def probe(self, key: AlarmKey, due: float) -> str | None:
        """The probe a claimed alarm carries (its agent asleep, its due time unchanged), if any."""
        rows = await self._run(
            f"SELECT probe FROM {SCHEMA}.alarms WHERE class_path = %s AND agent_id = %s AND next_due = %s AND asleep",
            (*key, due),
        )
        return rows[0][0] if rows else None

    async def defer(self, key: AlarmKey, due: float, until: float) -> None:
        """Its probe found nothing to do: the alarm is due at `until` instead (its probe kept), unless the
        agent moved it meanwhile. The agent's own schedule row keeps its time: when the agent wakes, the
        check it postponed runs first."""
        await self._run(
            f"UPDATE {SCHEMA}.alarms SET next_due = %s, lease_until = NULL, lease_owner = NULL "
            "WHERE class_path = %s AND agent_id = %s AND next_due = %s AND lease_owner = %s",
            (until, *key, due, self.owner),
        )

    async def release(self, key: AlarmKey, due: float, next_due: float | None) -> None:
        """The wake-up is over: the agent has written its next due time (or removed its row) itself."""
        await self._run(
            f"UPDATE {SCHEMA}.alarms SET lease_until = NULL, lease_owner = NULL "
            "WHERE class_path = %s AND agent_id = %s AND lease_owner = %s",
            (*key, self.owner),
        )

    async def retry_in(self, key: AlarmKey, due: float, delay: float) -> None:
        """The wake-up failed: nobody claims it again for `delay` seconds."""
        await self._run(
            f"UPDATE {SCHEMA}.alarms SET lease_until = %s WHERE class_path = %s AND agent_id = %s",
            (time.time() + delay, *key),
        )

    async def forget(self, key: AlarmKey, due: float) -> None:
        """The agent no longer exists: drop its row (unless its due time moved since)."""
        await self._run(
            f"DELETE FROM {SCHEMA}.alarms WHERE class_path = %s AND agent_id = %s AND next_due = %s", (*key, due)
        )

    async def park(self, key: AlarmKey, reason: str) -> None:
        """Its class cannot be loaded: keep the row, with why, out of every claim until `unpark`."""
        await self._run(
            f"UPDATE {SCHEMA}.alarms SET parked_error = %s, lease_until = NULL, lease_owner = NULL "
            "WHERE class_path = %s AND agent_id = %s",
            (reason, *key),
        )

    async def unpark(self, class_path: str) -> None:
        await self._run(f"UPDATE {SCHEMA}.alarms SET parked_error = NULL WHERE class_path = %s", (class_path,))
        self.poke()

    async def pending(self) -> dict[AlarmKey, float]:
        rows = await self._run(f"SELECT class_path, agent_id, next_due FROM {SCHEMA}.alarms")
        return {(row[0], row[1]): float(row[2]) for row in rows}


def alarm_rows_sql() -> str:
    """What an operator reads (`agentrt status`), as the operator."""
    return f"SELECT class_path, agent_id, next_due, parked_error FROM {SCHEMA}.alarms"
