"""`agentrt status`: the operator's first look at a storage root, from its files, waking nothing.

Live agents (the hosts' resident lists), sleeping agents with a due alarm (the scheduler's index), tool
calls waiting for their user (count, oldest), and schedules parked after failing every retry, with their
last error. `collect` gives the figures as JSON-able data; `render` draws them with rich.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agents.status import waiting_tool_calls
from runtime.status import agents_on_file, due_alarms, live_agents, parked_schedules
from runtime.storage_choice import redacted_url, storage_url


def collect(storage_dir: Path) -> dict[str, Any]:
    live = live_agents(storage_dir)
    alarms = due_alarms(storage_dir)
    waiting = waiting_tool_calls(storage_dir)
    parked = parked_schedules(storage_dir)
    counted = agents_on_file(Path(storage_dir))
    return {
        "storage_dir": str(Path(storage_dir).resolve()),
        "at": time.time(),
        "read_from": _source(counted),
        "agents_on_file": counted,
        "live_agents": [asdict(ref) for ref in live],
        "sleeping_with_due_alarm": [asdict(a) for a in alarms if not a.live],
        "pending_approvals": {
            "count": len(waiting),
            "oldest_since": waiting[0].since if waiting else None,
            "calls": [asdict(p) for p in waiting],
        },
        "parked_schedules": [asdict(p) for p in parked],
        "parked_alarms": [asdict(a) for a in alarms if a.parked_error],
    }


def _source(agents: int) -> str:
    """Where the figures come from, and what reading them costs."""
    url = storage_url()
    if url is not None:
        return f"the database ({redacted_url(url)}): indexed queries, one per agent class"
    return f"the agents' SQLite files: a scan that opens each of the {agents} (about 0.6 ms per file)"


def render(report: dict[str, Any], console: Console) -> None:
    now = report["at"]
    console.print(f"[bold]agentrt status[/] of {report['storage_dir']}")
    console.print(f"read from {report['read_from']}")
    console.print(f"agents on file: {report['agents_on_file']}, live: {len(report['live_agents'])}")
    sleeping = report["sleeping_with_due_alarm"]
    console.print(f"sleeping agents with a due alarm: {len(sleeping)}")
    _table(
        console,
        "Due alarms",
        ["agent", "due in"],
        [[f"{_short(a['class_path'])}/{a['agent_id']}", _relative(a["next_due"] - now)] for a in sleeping[:20]],
    )
    pending = report["pending_approvals"]
    oldest = f" (oldest waiting {_relative(now - pending['oldest_since'])})" if pending["oldest_since"] else ""
    console.print(f"tool calls waiting for their user: {pending['count']}{oldest}")
    _table(
        console,
        "Waiting",
        ["thread", "tool", "state", "waiting for"],
        [
            [p["thread"]["agent_id"], p["tool_name"], p["state"], _relative(now - p["since"])]
            for p in pending["calls"][:20]
        ],
    )
    parked_alarms = report.get("parked_alarms", [])
    console.print(f"parked alarms (their agent's class cannot be loaded): {len(parked_alarms)}")
    _table(
        console,
        "Parked alarms",
        ["agent", "why"],
        [[f"{_short(a['class_path'])}/{a['agent_id']}", a["parked_error"]] for a in parked_alarms[:20]],
    )
    parked = report["parked_schedules"]
    console.print(f"parked schedules (failed every retry): {len(parked)}")
    _table(
        console,
        "Parked",
        ["agent", "callback", "attempts", "last error"],
        [
            [
                f"{p['agent']['class_name']}/{p['agent']['agent_id']}",
                p["callback"],
                str(p["attempts"]),
                p["last_error"] or "",
            ]
            for p in parked[:20]
        ],
    )


def _table(console: Console, title: str, columns: list[str], body: list[list[str]]) -> None:
    if not body:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in body:
        table.add_row(*row)
    console.print(table)


def _short(class_path: str) -> str:
    return class_path.rpartition(":")[2]


def _relative(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
