"""An operator's reads across every agent of a PostgreSQL database (`agentrt status`), without waking any.

Each class's tables keep each agent to its own rows (`runtime.pg_agent_rows`); a session run as the
operator (`agentrt.agent_id` = `*`) reads every agent's rows and can write none. Every query here is one
indexed statement per agent class (its schema named by `COMMENT ON SCHEMA`), whatever the number of agents.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from runtime.pg_agent_rows import AGENT_COLUMN, AGENT_SETTING, OPERATOR


def _operator(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, connect_timeout=10, row_factory=dict_row, autocommit=True)
    conn.execute("SELECT set_config(%s, %s, false)", (AGENT_SETTING, OPERATOR))
    return conn


def _schemas_with(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(schema, class name) of every agent class schema holding `table`."""
    found = conn.execute(
        "SELECT n.nspname AS schema, obj_description(n.oid, 'pg_namespace') AS class_name FROM pg_namespace n "
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s AND c.relkind = 'r' "
        "WHERE n.nspname LIKE 'agents\\_%%' ORDER BY n.nspname",
        (table,),
    ).fetchall()
    return [(row["schema"], row["class_name"] or row["schema"]) for row in found]


def class_rows(
    url: str, table: str, columns: Sequence[str], where: str = "TRUE", params: Sequence[Any] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(class name, row with `_owner` (whose row it is) and `columns`) of every agent's rows of `table`
    matching `where`."""
    with _operator(url) as conn:
        for schema, class_name in _schemas_with(conn, table):
            query = pgsql.SQL("SELECT {owner} AS _owner, {cols} FROM {t} WHERE {w}").format(
                owner=pgsql.Identifier(AGENT_COLUMN),
                cols=pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns),
                t=pgsql.Identifier(schema, table),
                w=pgsql.SQL(where),  # the caller's fixed text, never user input
            )
            for row in conn.execute(query, tuple(params)).fetchall():
                yield class_name, row


def agent_count(url: str, skip: str) -> int:
    """How many agents were ever created, over every class but `skip` (the shared stores)."""
    with _operator(url) as conn:
        total = 0
        for schema, class_name in _schemas_with(conn, "_agents"):
            if class_name != skip:
                query = pgsql.SQL("SELECT count(*) AS n FROM {}").format(pgsql.Identifier(schema, "_agents"))
                total += conn.execute(query).fetchone()["n"]  # type: ignore[index]
        return total


def alarm_rows(url: str) -> list[dict[str, Any]]:
    """Every agent's next due time (`runtime.pg_alarms`): class_path, agent_id, next_due, parked_error."""
    from runtime.pg_alarms import alarm_rows_sql

    with _operator(url) as conn:
        try:
            return conn.execute(alarm_rows_sql()).fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # no agent has been activated in this database yet
