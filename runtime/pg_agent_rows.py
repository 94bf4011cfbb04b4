"""Making an agent class's tables per-agent on PostgreSQL (see `runtime.storage_pg`).

Every table of a class schema gets an `_agentrt_agent` column, filled in by default from the transaction's
`agentrt.agent_id` setting, and a row-level security policy (forced, so the table's owner obeys it too)
that lets a statement see and write only the rows of that id; a statement run without the setting sees
no rows and cannot write one, and one run as the operator (`*`) reads every agent's rows but writes none.
Its primary key, unique constraints and indexes are rebuilt led by it (uniqueness holds per
agent, and one agent's rows are one index range), and so are foreign keys (one agent's rows may only
reference its own). Run after every migration step; idempotent.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql as pgsql

from runtime.storage_api import StorageError

AGENT_SETTING = "agentrt.agent_id"
EPOCH_SETTING = "agentrt.epoch"
"""The fencing epoch of the activation writing (a transaction setting: what an audit trigger can compare
with the agent's current epoch; the runtime's own check is `StorageAPI.refuse_if_stale`)."""
AGENT_COLUMN = "_agentrt_agent"
"""The column that says whose a row is (a name no agent's own table would use: `agent_id` is common)."""
OPERATOR = "*"
"""The setting's value for an operator's view (`runtime.status`): every agent's rows, for reading only."""


async def scope_new_tables(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Make every table of `schema` per-agent (see the module docstring), and lead its indexes and foreign
    keys with `_agentrt_agent`. Idempotent: a table already scoped keeps its column and policy."""
    foreign_keys = await _take_foreign_keys(conn, schema)
    tables = await (
        await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname NOT IN ('_agents', '_migrations') "
            "AND NOT c.relrowsecurity",
            (schema,),
        )
    ).fetchall()
    for (name,) in tables:
        table = pgsql.Identifier(schema, name)
        setting = pgsql.Literal(AGENT_SETTING)
        await conn.execute(
            pgsql.SQL(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} TEXT NOT NULL DEFAULT current_setting({s}, true)"
            ).format(t=table, c=pgsql.Identifier(AGENT_COLUMN), s=setting)
        )
        await conn.execute(pgsql.SQL("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY").format(t=table))
        await conn.execute(pgsql.SQL("ALTER TABLE {t} FORCE ROW LEVEL SECURITY").format(t=table))
        await conn.execute(
            pgsql.SQL(
                "CREATE POLICY agent_rows ON {t} USING (_agentrt_agent = current_setting({s}, true)) "
                "WITH CHECK (_agentrt_agent = current_setting({s}, true))"
            ).format(t=table, s=setting)
        )
        await conn.execute(  # `agentrt status`: reads across agents, never writes (OPERATOR)
            pgsql.SQL("CREATE POLICY operator_reads ON {t} FOR SELECT USING (current_setting({s}, true) = {o})").format(
                t=table, s=setting, o=pgsql.Literal(OPERATOR)
            )
        )
    await _lead_indexes_with_agent_column(conn, schema)
    for name, table, columns, target, target_columns, on_delete in foreign_keys:
        await conn.execute(
            pgsql.SQL("ALTER TABLE {t} ADD CONSTRAINT {c} FOREIGN KEY ({cols}) REFERENCES {f} ({fcols}) {d}").format(
                t=pgsql.Identifier(schema, table),
                c=pgsql.Identifier(name),
                cols=pgsql.SQL(", ").join(pgsql.Identifier(c) for c in [AGENT_COLUMN, *columns]),
                f=pgsql.Identifier(schema, target),
                fcols=pgsql.SQL(", ").join(pgsql.Identifier(c) for c in [AGENT_COLUMN, *target_columns]),
                d=pgsql.SQL(_ON_DELETE[on_delete]),
            )
        )


_ON_DELETE = {"a": "ON DELETE NO ACTION", "r": "ON DELETE RESTRICT", "c": "ON DELETE CASCADE"}


async def _take_foreign_keys(conn: psycopg.AsyncConnection[Any], schema: str) -> list[tuple[Any, ...]]:
    """Drop and return the foreign keys of `schema` not yet led by `_agentrt_agent` (re-added, led by it, once
    the keys they reference are): one agent's rows may only reference its own."""
    found = await (
        await conn.execute(
            "SELECT con.conname, t.relname, "
            "ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a "
            "      ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), "
            "f.relname, "
            "ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o) JOIN pg_attribute a "
            "      ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o), "
            "con.confdeltype "
            "FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_class f ON f.oid = con.confrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = %s AND con.contype = 'f'",
            (schema,),
        )
    ).fetchall()
    taken = []
    for name, table, columns, target, target_columns, on_delete in found:
        if columns and columns[0] == AGENT_COLUMN:
            continue
        if on_delete not in _ON_DELETE:
            raise StorageError(f"{schema}.{table}: foreign key {name}: only ON DELETE NO ACTION/RESTRICT/CASCADE")
        await conn.execute(
            pgsql.SQL("ALTER TABLE {t} DROP CONSTRAINT {c}").format(
                t=pgsql.Identifier(schema, table), c=pgsql.Identifier(name)
            )
        )
        taken.append((name, table, list(columns), target, list(target_columns), on_delete))
    return taken


async def _lead_indexes_with_agent_column(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Every index (primary keys and unique constraints included) of a scoped table, rebuilt with
    `_agentrt_agent` first: uniqueness holds per agent, and an agent's rows are one index range."""
    indexes = await (
        await conn.execute(
            "SELECT t.relname, i.relname, ix.indisunique, ix.indisprimary, con.conname, "
            "ARRAY(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, ord) "
            "      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord), "
            "ix.indexprs IS NOT NULL "
            "FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "LEFT JOIN pg_constraint con ON con.conindid = ix.indexrelid AND con.conrelid = t.oid "
            "WHERE n.nspname = %s AND t.relrowsecurity AND t.relname NOT IN ('_agents', '_migrations')",
            (schema,),
        )
    ).fetchall()
    for table_name, index_name, unique, primary, constraint, columns, has_expressions in indexes:
        if columns and columns[0] == AGENT_COLUMN:
            continue
        if has_expressions:
            raise StorageError(f"{schema}.{table_name}: index {index_name} on an expression is not supported")
        table = pgsql.Identifier(schema, table_name)
        led = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in [AGENT_COLUMN, *columns])
        if constraint:
            kind = pgsql.SQL("PRIMARY KEY" if primary else "UNIQUE")
            await conn.execute(
                pgsql.SQL("ALTER TABLE {t} DROP CONSTRAINT {c}, ADD CONSTRAINT {c} {k} ({cols})").format(
                    t=table, c=pgsql.Identifier(constraint), k=kind, cols=led
                )
            )
        else:
            await conn.execute(pgsql.SQL("DROP INDEX {i}").format(i=pgsql.Identifier(schema, index_name)))
            await conn.execute(
                pgsql.SQL("CREATE {u}INDEX {i} ON {t} ({cols})").format(
                    u=pgsql.SQL("UNIQUE " if unique else ""), i=pgsql.Identifier(index_name), t=table, cols=led
                )
            )
