"""The alarm index on SQLite: `(class, id) -> next due time` beside the agents' files, and its heap.

Each agent file is the truth about its own schedules, but nothing can watch 100,000 files: so a live agent
reports its next due time here (`runtime.alarm_client`) and the scheduler wakes sleeping agents from this
index (`_runtime/alarm_index.sqlite3`). It is written only when a due time actually changes. If the file
is lost it is rebuilt from the agents' files at the scheduler's next start (each agent records its class
path for that, `CLASS_PATH_KEY`), so losing it loses nothing but the time the scan takes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import time
from pathlib import Path

from runtime import metrics
from runtime.agent_files import agent_files, rows
from runtime.placement import runtime_dir
from runtime.storage_choice import shared_storage

logger = logging.getLogger("runtime.scheduler")

INDEX_NAME = "alarm_index"

INDEX_MIGRATIONS = [
    """
    CREATE TABLE alarm_index (
        class_path TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        next_due REAL NOT NULL,
        PRIMARY KEY (class_path, agent_id)
    );
    """,
    "ALTER TABLE alarm_index ADD COLUMN parked_error TEXT",
    "ALTER TABLE alarm_index ADD COLUMN probe TEXT",
]

CLASS_PATH_KEY = "_class_path"
"""Where an agent's file records its class path (`module:Class`), so a lost index can be rebuilt."""

AlarmKey = tuple[str, str]
"""(class path, agent id)."""


def index_path(storage_dir: Path) -> Path:
    return runtime_dir(storage_dir) / f"{INDEX_NAME}.sqlite3"


class AlarmIndex:
    """The index file and an in-memory heap of wake-ups rebuilt from it; `claim` hands out what is due."""

    def __init__(self, storage_dir: Path, *, grace: float) -> None:
        self.storage_dir = storage_dir
        self.grace = grace
        self._store = shared_storage(INDEX_NAME, index_path(storage_dir))
        self._due: dict[AlarmKey, float] = {}
        self._parked: dict[AlarmKey, str] = {}
        self._probes: dict[AlarmKey, str] = {}
        """The probes of sleeping agents' alarms (`runtime.alarm_probes`), as JSON."""
        self._heap: list[tuple[float, int, AlarmKey, float]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    async def open(self) -> None:
        lost = not index_path(self.storage_dir).exists()
        await self._store.open()
        await self._store.migrate("runtime.AlarmScheduler", INDEX_MIGRATIONS)
        if lost:
            await self._rebuild()
        for row in await self._store.fetchall(
            "SELECT class_path, agent_id, next_due, parked_error, probe FROM alarm_index"
        ):
            key = (row["class_path"], row["agent_id"])
            self._due[key] = float(row["next_due"])
            if row["probe"]:
                self._probes[key] = row["probe"]
            if row["parked_error"]:
                self._parked[key] = row["parked_error"]
            else:
                self._push(float(row["next_due"]) + self.grace, key, float(row["next_due"]))
        metrics.DUE_ALARMS.set(len(self._due))

    async def close(self) -> None:
        """Close the index file (the scheduler keeps it open for its whole life; tests close it)."""
        await self._store.close()

    async def _rebuild(self) -> None:
        """Fill a new index from the agents' files (the index was deleted, or this root is new)."""
        found = await asyncio.to_thread(_due_times_on_file, self.storage_dir)
        if found:
            async with self._store.transaction() as tx:
                await tx.executemany(
                    "INSERT OR REPLACE INTO alarm_index(class_path, agent_id, next_due) VALUES (?, ?, ?)", found
                )
            logger.warning("the alarm index was missing: rebuilt it from the agents' files (%d due)", len(found))

    def _push(self, fire_at: float, key: AlarmKey, due: float) -> None:
        heapq.heappush(self._heap, (fire_at, next(self._seq), key, due))
        self._changed.set()

    async def record(self, key: AlarmKey, due: float | None, asleep: bool = False, probe: str | None = None) -> None:
        """An agent's next due time (None: nothing due) and, going to sleep, its alarm's probe; written only
        if one changed. An agent going to sleep is woken at that time; a live one's own timer gets `grace`
        first (and its alarm carries no probe)."""
        probe = probe if asleep else None
        unchanged = self._due.get(key) == due and self._probes.get(key) == probe
        if due is not None and unchanged and key not in self._parked:
            self._push(due if asleep else due + self.grace, key, due)  # unchanged: no write
            return
        if due is None:
            if key not in self._due:
                return  # nothing indexed (the in-memory map mirrors the index): every activation says this
            await self._store.execute("DELETE FROM alarm_index WHERE class_path = ? AND agent_id = ?", key)
            self._due.pop(key, None)
            self._parked.pop(key, None)
            self._probes.pop(key, None)
        else:
            await self._store.execute(
                "INSERT INTO alarm_index(class_path, agent_id, next_due, probe) VALUES (?, ?, ?, ?) ON CONFLICT("
                "class_path, agent_id) DO UPDATE SET next_due = excluded.next_due, parked_error = NULL, "
                "probe = excluded.probe",
                (*key, due, probe),
            )
            self._parked.pop(key, None)
            self._due[key] = due
            if probe is None:
                self._probes.pop(key, None)
            else:
                self._probes[key] = probe
            self._push(due if asleep else due + self.grace, key, due)
        metrics.DUE_ALARMS.set(len(self._due))

    async def claim(self, limit: int = 1) -> list[tuple[AlarmKey, float]]:
        """Wait until an alarm is due (its time plus the grace a live agent's own timer gets); return it
        (one at a time: any `limit` is room enough)."""
        while True:
            if not self._heap:
                self._changed.clear()
                await self._changed.wait()
                continue
            fire_at, _, key, due = self._heap[0]
            delay = fire_at - time.time()
            if delay > 0:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=delay)
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            if self._due.get(key) == due and key not in self._parked:
                return [(key, due)]  # else stale: the agent re-armed since

    async def release(self, key: AlarmKey, due: float, next_due: float | None) -> None:
        """The wake-up is over; the agent answered `next_due` (used if it did not report it itself)."""
        if self._due.get(key) == due:
            await self.record(key, next_due)

    async def probe(self, key: AlarmKey, due: float) -> str | None:
        """The probe a claimed alarm carries (its agent asleep, its due time unchanged), if any."""
        return self._probes.get(key) if self._due.get(key) == due else None

    async def defer(self, key: AlarmKey, due: float, until: float) -> None:
        """Its probe found nothing to do: the alarm is due at `until` instead (its probe kept), unless the
        agent moved it meanwhile. In memory only: a scheduler that restarts finds the earlier time in the
        file and runs the probe once more, which costs one look and saves a write per probe. The agent's
        own schedule row keeps its time too: when the agent wakes, the check it postponed runs first."""
        if self._due.get(key) != due:
            return
        self._due[key] = until
        self._push(until, key, until)

    async def retry_in(self, key: AlarmKey, due: float, delay: float) -> None:
        if self._due.get(key) == due:
            self._push(time.time() + delay, key, due)

    async def forget(self, key: AlarmKey, due: float) -> None:
        if self._due.get(key) == due:
            await self.record(key, None)

    async def park(self, key: AlarmKey, reason: str) -> None:
        self._parked[key] = reason
        await self._store.execute(
            "UPDATE alarm_index SET parked_error = ? WHERE class_path = ? AND agent_id = ?", (reason, *key)
        )

    async def unpark(self, class_path: str) -> None:
        for key in [k for k in self._parked if k[0] == class_path]:
            del self._parked[key]
            await self._store.execute(
                "UPDATE alarm_index SET parked_error = NULL WHERE class_path = ? AND agent_id = ?", key
            )
            self._push(time.time(), key, self._due[key])

    async def pending(self) -> dict[AlarmKey, float]:
        return dict(self._due)


def _due_times_on_file(storage_dir: Path) -> list[tuple[str, str, float]]:
    """(class path, id, next due) of every agent file with a pending schedule and a recorded class path."""
    found, unknown = [], 0
    for ref, path in agent_files(storage_dir):
        due = rows(path, "SELECT MIN(due_at) AS due FROM _schedules WHERE status = 'pending'")
        if not due or due[0]["due"] is None:
            continue
        recorded = rows(path, "SELECT value FROM _kv WHERE key = ?", (CLASS_PATH_KEY,))
        if not recorded:
            unknown += 1  # written before class paths were recorded: indexed again when it next activates
            continue
        found.append((json.loads(recorded[0]["value"]), ref.agent_id, float(due[0]["due"])))
    if unknown:
        logger.warning("%d agents with due schedules do not record their class; they are woken when next used", unknown)
    return found
