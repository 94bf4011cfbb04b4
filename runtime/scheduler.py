"""The alarm scheduler: wakes agents whose schedules are due when nothing else would.

A live agent fires its own schedules with a local timer. This detached actor covers the times it can't:
the agent hibernated, its host was killed, the whole Ray cluster restarted, or it was never called since.
Its only state is a durable index of `(class, id) -> next due time` (SQLite beside the agents' files, or
the agents' PostgreSQL database) and an in-memory heap rebuilt from that index on start; the index is
written only when a due time changes. The agents' own files stay the source of truth:
each wake-up asks the agent to run what is due and report its next due time.

One scheduler serves one storage root in one namespace (its actor name carries a hash of the root).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import ray

from runtime import metrics
from runtime.agent import Agent
from runtime.backoff import exponential_delay
from runtime.classes import import_agent_class
from runtime.errors import AgentNotFoundError
from runtime.handles import AgentHandle
from runtime.placement import runtime_dir, scheduler_name
from runtime.status import agents_on_file
from runtime.storage_choice import shared_storage

logger = logging.getLogger("runtime.scheduler")

WAKE_GRACE_SECONDS = 0.5
"""A live agent's own timer fires first; the scheduler calls only if the due time passed this long ago."""

RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0
"""A failed wake-up is retried after 0.5 s, 1 s, 2 s, ... at most 30 s (`runtime.backoff`)."""

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
]

INDEX_NAME = "alarm_index"
"""The index: `_runtime/alarm_index.sqlite3`, or its rows in the database (`AGENT_STORAGE_URL`), where a
lost scheduler (or node) loses nothing of it."""

CENSUS_SECONDS = 60.0
"""How often the scheduler counts the agents' files for the sleeping-agents figure."""

_handles: dict[tuple[str, str, str], Any] = {}


def ensure_scheduler(storage_dir: Path, namespace: str) -> Any:
    """Get or create the scheduler actor for this storage root and namespace."""
    root = Path(storage_dir).resolve()
    cache_key = (ray.get_runtime_context().get_session_name(), str(root), namespace)
    if cache_key in _handles:  # a handle stays valid across the actor's restarts, not the cluster's
        return _handles[cache_key]
    handle = AlarmScheduler.options(  # type: ignore[attr-defined]
        name=scheduler_name(root),
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
        max_concurrency=1000,
    ).remote(str(root), namespace)
    _handles[cache_key] = handle
    return handle


@ray.remote
class AlarmScheduler:
    """Heap of next wake-ups, persisted as an index; calls `_run_due_schedules` on due agents."""

    def __init__(self, storage_dir: str, namespace: str) -> None:
        self.storage_dir = Path(storage_dir)
        self.namespace = namespace
        self.index = shared_storage(INDEX_NAME, runtime_dir(self.storage_dir) / f"{INDEX_NAME}.sqlite3")
        self._due: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, int, tuple[str, str], float]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._in_flight: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], int] = {}
        self._classes: dict[str, type[Agent]] = {}
        """Classes no process can import by path (defined in a script), as handles registered them."""
        self._parked: dict[tuple[str, str], str] = {}
        """Due alarms whose class cannot be loaded here, with why: waiting for the class to be registered."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loaded = asyncio.get_running_loop().create_task(self._load())
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self._census_task = asyncio.get_running_loop().create_task(self._census())

    async def _load(self) -> None:
        await self.index.open()
        await self.index.migrate("runtime.AlarmScheduler", INDEX_MIGRATIONS)
        for row in await self.index.fetchall("SELECT class_path, agent_id, next_due, parked_error FROM alarm_index"):
            key = (row["class_path"], row["agent_id"])
            self._due[key] = float(row["next_due"])
            if row["parked_error"]:
                self._parked[key] = row["parked_error"]
            else:
                self._push(float(row["next_due"]), key, float(row["next_due"]))

    async def _census(self) -> None:
        """Every minute, how many agents the storage root holds (`agentrt_agents_on_file`): with the hosts'
        live gauge, what is asleep. Counting names in the class folders reads no file."""
        while True:
            try:
                count = await asyncio.to_thread(agents_on_file, self.storage_dir)
                metrics.AGENTS_ON_FILE.set(count)
            except OSError as exc:
                logger.warning("counting the agents' files failed: %s", exc)
            await asyncio.sleep(CENSUS_SECONDS)

    def _push(self, fire_at: float, key: tuple[str, str], due: float) -> None:
        heapq.heappush(self._heap, (fire_at, next(self._seq), key, due))
        self._changed.set()

    async def register_class(self, cls: type[Agent]) -> None:
        """Wake the agents of `cls` (a class defined in a script, sent by value) with it from now on; the
        alarms parked for want of it are due again."""
        await self._loaded
        self._classes[cls.class_path()] = cls
        for key in [k for k in self._parked if k[0] == cls.class_path()]:
            del self._parked[key]
            await self.index.execute(
                "UPDATE alarm_index SET parked_error = NULL WHERE class_path = ? AND agent_id = ?", key
            )
            self._push(time.time(), key, self._due[key])

    async def set_next_due(
        self, class_path: str, agent_id: str, due: float | None, agent_class: type[Agent] | None = None
    ) -> None:
        """Record (durably) when an agent next needs waking; None removes it from the index. A class that
        cannot be imported by path comes along (`agent_class`) and is registered."""
        await self._loaded
        if agent_class is not None and class_path not in self._classes:
            await self.register_class(agent_class)
        key = (class_path, agent_id)
        if due is not None and self._due.get(key) == due and key not in self._parked:
            self._push(due + WAKE_GRACE_SECONDS, key, due)  # unchanged: no write (a wake-up may have used its entry)
            return
        if due is None:
            if key not in self._due:
                return  # nothing indexed (the in-memory map mirrors the index): every activation says this
            await self.index.execute(
                "DELETE FROM alarm_index WHERE class_path = ? AND agent_id = ?", (class_path, agent_id)
            )
            self._due.pop(key, None)
            metrics.DUE_ALARMS.set(len(self._due))
            return
        await self.index.execute(
            "INSERT INTO alarm_index(class_path, agent_id, next_due) VALUES (?, ?, ?) "
            "ON CONFLICT(class_path, agent_id) DO UPDATE SET next_due = excluded.next_due, parked_error = NULL",
            (class_path, agent_id, due),
        )
        self._parked.pop(key, None)
        self._due[key] = due
        self._push(due + WAKE_GRACE_SECONDS, key, due)
        metrics.DUE_ALARMS.set(len(self._due))

    async def pending(self) -> dict[str, float]:
        """The index as `{"Class path|id": next_due}` (for operators and tests)."""
        await self._loaded
        return {f"{cp}|{aid}": due for (cp, aid), due in self._due.items()}

    async def _run(self) -> None:
        await self._loaded
        while True:
            if not self._heap:
                await self._changed.wait()
                self._changed.clear()
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
            if self._due.get(key) != due or key in self._in_flight or key in self._parked:
                continue  # stale entry: the agent re-armed since, or a wake-up is already running
            self._in_flight.add(key)
            task = asyncio.get_running_loop().create_task(self._wake(key, due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _agent_class(self, key: tuple[str, str]) -> type[Agent] | None:
        """The class of a due agent: registered, or imported by path. If neither works (a class defined in a
        script, after a restart), the alarm is parked with the reason, in the index (`agentrt status` shows
        it), until the script runs again and registers its class: never a silent retry loop."""
        class_path = key[0]
        if class_path in self._classes:
            return self._classes[class_path]
        try:
            return import_agent_class(class_path)
        except Exception as exc:
            reason = (
                f"cannot load {class_path} ({type(exc).__name__}: {exc}); if it is defined in a script, run the "
                "script again (runtime.init() or get_agent() registers it), or move it into an importable module"
            )[:1000]
            logger.error("the alarm of %s/%s is parked: %s", class_path, key[1], reason)
            self._parked[key] = reason
            await self.index.execute(
                "UPDATE alarm_index SET parked_error = ? WHERE class_path = ? AND agent_id = ?", (reason, *key)
            )
            return None

    async def _wake(self, key: tuple[str, str], due: float) -> None:
        class_path, agent_id = key
        cls = await self._agent_class(key)
        if cls is None:
            self._in_flight.discard(key)
            return
        try:
            agent = await asyncio.to_thread(  # finding (or starting) its host blocks: keep the loop free
                AgentHandle, cls, agent_id, storage_dir=self.storage_dir, namespace=self.namespace, create=False
            )
            next_due = await agent._run_due_schedules()
            self._failures.pop(key, None)
        except AgentNotFoundError:
            logger.warning("%s/%s is due but its file is gone; dropping it from the index", class_path, agent_id)
            self._in_flight.discard(key)
            if self._due.get(key) == due:
                await self.set_next_due(class_path, agent_id, None)
            return
        except Exception as exc:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            backoff = exponential_delay(failures, RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS)
            logger.warning("waking %s/%s failed (%s); retrying in %.1fs", class_path, agent_id, exc, backoff)
            if self._due.get(key) == due:
                self._push(time.time() + backoff, key, due)
            return
        finally:
            self._in_flight.discard(key)
        if self._due.get(key) == due:  # the agent did not re-report (e.g. report failed): use its answer
            await self.set_next_due(class_path, agent_id, next_due)
