"""Reading agents' SQLite files from outside, read-only and without Ray: the files of a storage root
(`<root>/<Class>/<id>.sqlite3`) and the rows of a query on one of them. Operators' views
(`runtime.status`) and the alarm index's rebuild (`runtime.alarm_index`) read agents this way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AgentRef:
    class_name: str
    agent_id: str


def read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    return db


def rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    """The rows of a query on a file, or none if the file or its table does not exist (yet)."""
    if not path.exists():
        return []
    try:
        with read_only(path) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def agent_files(storage_dir: Path) -> Iterator[tuple[AgentRef, Path]]:
    """Every agent's own file: `<root>/<Class>/<id>.sqlite3` (not the runtime's, not sub-folders)."""
    root = Path(storage_dir)
    if not root.is_dir():
        return
    for class_dir in sorted(root.iterdir()):
        if not class_dir.is_dir() or class_dir.name.startswith("_"):
            continue
        for path in sorted(class_dir.glob("*.sqlite3")):
            yield AgentRef(class_dir.name, path.name.removesuffix(".sqlite3")), path
