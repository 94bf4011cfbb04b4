"""What an operator asks first, read from a storage root's files (or, with `AGENT_STORAGE_URL`, from the
database: `runtime.pg_operator`) without waking any agent.

- live agents: the hosts' resident lists (`_runtime/hosts/<slot>.sqlite3`; a host that crashed lists its
  agents until it restarts and re-activates them);
- sleeping agents with a due alarm: the alarm scheduler's index (`_runtime/alarm_index.sqlite3`), or the
  database's alarm table (`runtime.pg_alarms`);
- parked schedules: schedules that failed every retry (`status = 'failed'`) in the agents' own files.

Every file is opened read-only; nothing here needs Ray. On SQLite the agents' figures scan every agent's
file (about 0.6 ms each); on PostgreSQL each is one query per agent class. Chat-level figures (pending
approvals) are in `agents.status`, which builds on `agent_rows`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.agent_files import AgentRef, agent_files, rows
from runtime.alarm_index import index_path
from runtime.placement import runtime_dir
from runtime.storage_choice import SHARED_CLASS, storage_url


@dataclass(frozen=True)
class DueAlarm:
    class_path: str
    agent_id: str
    next_due: float
    live: bool
    parked_error: str | None = None
    """Why the alarm cannot fire (its class cannot be loaded); None while it can."""


@dataclass(frozen=True)
class ParkedSchedule:
    agent: AgentRef
    schedule_id: str
    callback: str
    attempts: int
    last_error: str | None
    due_at: float


def agents_on_file(storage_dir: Path) -> int:
    """The agents a storage root holds: `<root>/<Class>/<id>.sqlite3` (not `_runtime`, not sub-folders), or
    the agents the database holds."""
    url = storage_url()
    if url is not None:
        from runtime.pg_operator import agent_count

        return agent_count(url, skip=SHARED_CLASS)
    total = 0
    for class_dir in os.scandir(storage_dir):
        if class_dir.is_dir() and not class_dir.name.startswith("_"):
            total += sum(1 for entry in os.scandir(class_dir.path) if entry.name.endswith(".sqlite3"))
    return total


def live_agents(storage_dir: Path) -> list[AgentRef]:
    found = []
    for host_file in sorted((runtime_dir(storage_dir) / "hosts").glob("*.sqlite3")):
        for row in rows(host_file, "SELECT name, agent_id FROM residents ORDER BY name"):
            found.append(AgentRef(str(row["name"]).split("/", 1)[0], row["agent_id"]))
    return found


def due_alarms(storage_dir: Path) -> list[DueAlarm]:
    live = {(ref.class_name, ref.agent_id) for ref in live_agents(storage_dir)}
    url = storage_url()
    if url is not None:
        from runtime.pg_operator import alarm_rows

        found = alarm_rows(url)
    else:
        found = rows(index_path(storage_dir), "SELECT class_path, agent_id, next_due, parked_error FROM alarm_index")
    return [
        DueAlarm(
            r["class_path"],
            r["agent_id"],
            r["next_due"],
            (_class_name(r["class_path"]), r["agent_id"]) in live,
            r["parked_error"],
        )
        for r in sorted(found, key=lambda r: r["next_due"])
    ]


def agent_rows(
    storage_dir: Path, table: str, columns: list[str], where: str = "1 = 1", params: tuple[object, ...] = ()
) -> Iterator[tuple[AgentRef, Any]]:
    """Every agent's rows of `table` matching `where` (fixed text with `?` parameters): each agent's file,
    or one query per class in the database."""
    url = storage_url()
    if url is None:
        sql = f"SELECT {', '.join(columns)} FROM {table} WHERE {where}"
        for ref, path in agent_files(storage_dir):
            for row in rows(path, sql, params):
                yield ref, row
        return
    from runtime.pg_operator import class_rows

    for class_name, row in class_rows(url, table, columns, where.replace("?", "%s"), params):
        yield AgentRef(class_name, row["_owner"]), row


def parked_schedules(storage_dir: Path) -> list[ParkedSchedule]:
    columns = ["id", "callback", "attempts", "last_error", "due_at"]
    found = [
        ParkedSchedule(ref, r["id"], r["callback"], r["attempts"], r["last_error"], r["due_at"])
        for ref, r in agent_rows(storage_dir, "_schedules", columns, "status = 'failed'")
    ]
    return sorted(found, key=lambda p: p.due_at)


def _class_name(class_path: str) -> str:
    """`module:Outer.Class` -> `Class` (the name an agent's actor and folder carry)."""
    return class_path.rpartition(":")[2].rpartition(".")[2]
