"""The alarm scheduler: wakes agents whose schedules are due when nothing else would.

A live agent fires its own schedules with a local timer. This detached actor covers the times it can't:
the agent hibernated, its host was killed, the whole Ray cluster restarted, or it was never called since.
It keeps no truth of its own; it reads a book of `(class, id) -> next due time`:

- on SQLite, an index beside the agents' files that agents report to, with a heap in memory
  (`runtime.alarm_index`; rebuilt from the agents' files if it is lost);
- on PostgreSQL, the database's alarm table, written by the agents' own schedule transactions and claimed
  with leases (`runtime.pg_alarms`), so several schedulers can share it and a lost one loses nothing.

Each wake-up asks the agent to run what is due and report its next due time. A sleeping agent's alarm may
carry a probe (`runtime.alarm_probes`): the scheduler runs it first, and wakes the agent only if it finds
something to do.
One scheduler serves one storage root in one namespace (its actor name carries a hash of the root). It also
hosts the root's placement keeper (`runtime.placement_keeper`): the root's one runtime process.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any, Protocol

import ray

from runtime import metrics
from runtime.agent import Agent
from runtime.alarm_index import AlarmIndex, AlarmKey
from runtime.alarm_probes import AlarmProbe, run_probe
from runtime.backoff import exponential_delay
from runtime.classes import import_agent_class, import_modules
from runtime.errors import AgentNotFoundError
from runtime.handles import AgentHandle
from runtime.placement import Placement, scheduler_name
from runtime.placement_keeper import PlacementKeeper
from runtime.settings import runtime_settings
from runtime.status import agents_on_file
from runtime.storage_choice import storage_url

logger = logging.getLogger("runtime.scheduler")

WAKE_GRACE_SECONDS = 0.5
"""A live agent's own timer fires first; the scheduler calls only if the due time passed this long ago."""

RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0
"""A failed wake-up is retried after 0.5 s, 1 s, 2 s, ... at most 30 s (`runtime.backoff`)."""

LEASE_SECONDS = 120.0
"""On PostgreSQL, how long an alarm a scheduler claimed is its own; past that (the scheduler died, or the
wake-up hangs) another scheduler claims it again."""

CENSUS_SECONDS = 60.0
"""How often the scheduler counts the agents' files for the sleeping-agents figure."""

_handles: dict[tuple[str, str, str], Any] = {}


class AlarmBook(Protocol):
    """Where the scheduler finds due agents: `AlarmIndex` (SQLite) or `AlarmTable` (PostgreSQL)."""

    async def open(self) -> None: ...
    async def record(
        self, key: AlarmKey, due: float | None, asleep: bool = False, probe: str | None = None
    ) -> None: ...
    async def claim(self, limit: int) -> list[tuple[AlarmKey, float]]: ...
    async def probe(self, key: AlarmKey, due: float) -> str | None: ...
    async def defer(self, key: AlarmKey, due: float, until: float) -> None: ...
    async def release(self, key: AlarmKey, due: float, next_due: float | None) -> None: ...
    async def retry_in(self, key: AlarmKey, due: float, delay: float) -> None: ...
    async def forget(self, key: AlarmKey, due: float) -> None: ...
    async def park(self, key: AlarmKey, reason: str) -> None: ...
    async def unpark(self, class_path: str) -> None: ...
    async def pending(self) -> dict[AlarmKey, float]: ...


def alarm_book(storage_dir: Path, *, lease_seconds: float = LEASE_SECONDS) -> AlarmBook:
    """The book of this deployment's storage backend."""
    url = storage_url()
    if url is None:
        return AlarmIndex(storage_dir, grace=WAKE_GRACE_SECONDS)
    from runtime.pg_alarms import AlarmTable

    context = ray.get_runtime_context()
    name = context.get_actor_name() if context.get_actor_id() else None
    owner = f"{context.namespace}/{name}" if name else f"unnamed:{uuid.uuid4().hex[:8]}"  # stable across restarts
    return AlarmTable(url, owner, grace=WAKE_GRACE_SECONDS, lease_seconds=lease_seconds)


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
        resources=runtime_settings().scheduler_resources or None,
        max_concurrency=1000,
        enable_task_events=False,  # as the hosts': runtime.host.HIGH_VOLUME_ACTOR
    ).remote(str(root), namespace, hosts=runtime_settings().hosts)
    _handles[cache_key] = handle
    return handle


def forget_scheduler_if_gone(storage_dir: Path, namespace: str, timeout: float) -> bool:
    """True if the root's scheduler is gone for good (killed with `no_restart`, or its restarts used up);
    this process then forgets its handle, so that the next `ensure_scheduler` starts a new one. Ray
    restarts a crashed one by itself; this is for the rest. Nothing is lost: the alarm book and the
    placement are durable, and the new actor reads both."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    root = Path(storage_dir).resolve()
    try:
        ray.get(ensure_scheduler(root, namespace).stats.remote(), timeout=timeout)
        return False
    except (GetTimeoutError, ActorUnavailableError):  # busy, or being restarted by Ray: it is not gone
        return False
    except ActorDiedError:
        _handles.pop((ray.get_runtime_context().get_session_name(), str(root), namespace), None)
        return True


@ray.remote
class AlarmScheduler:
    """Wakes the agents its book says are due (`_run_due_schedules`), retrying failures with backoff."""

    def __init__(
        self, storage_dir: str, namespace: str, lease_seconds: float = LEASE_SECONDS, hosts: int | None = None
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.namespace = namespace
        self._keeper = PlacementKeeper(self.storage_dir, namespace, hosts or runtime_settings().hosts)
        self.book = alarm_book(self.storage_dir, lease_seconds=lease_seconds)
        self.max_wakes = runtime_settings().scheduler_max_wakes
        self._in_flight: set[AlarmKey] = set()
        self._slot_freed = asyncio.Event()
        self.peak_in_flight = 0
        self._failures: dict[AlarmKey, int] = {}
        self._classes: dict[str, type[Agent]] = {}
        """Classes no process can import by path (defined in a script), as handles registered them."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self.woken = 0
        self.probed = 0
        """Alarms a probe answered "nothing yet" for: wake-ups saved."""
        self._loaded = asyncio.get_running_loop().create_task(self.book.open())
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self._census_task = asyncio.get_running_loop().create_task(self._census())

    async def _census(self) -> None:
        """Every minute, how many agents the storage root holds (`agentrt_agents_on_file`): with the hosts'
        live gauge, what is asleep. Counting names in the class folders reads no file."""
        while True:
            try:
                count = await asyncio.to_thread(agents_on_file, self.storage_dir)
                metrics.AGENTS_ON_FILE.set(count)
            except Exception as exc:
                logger.warning("counting the agents failed: %s", exc)
            await asyncio.sleep(CENSUS_SECONDS)

    # -- the root's placement (kept here: one runtime process per root) -------------------------------
    async def placement(self) -> Placement:
        """The root's placement now (`runtime.placement_view` asks)."""
        return await self._keeper.current()

    async def resize_hosts(self, hosts: int) -> dict[str, Any]:
        """Spread the root's agents over `hosts` hosts (`runtime.set_host_count`)."""
        return await self._keeper.resize(hosts)

    async def preload(self, modules: list[str]) -> None:
        """Import the agents' code now (`runtime.registry.start_runtime`): the first wake-up does not pay for
        it, and this process's memory at rest is what it will be once used."""
        await asyncio.to_thread(import_modules, modules)

    async def register_class(self, cls: type[Agent]) -> None:
        """Wake the agents of `cls` (a class defined in a script, sent by value) with it from now on; the
        alarms parked for want of it are due again."""
        await self._loaded
        self._classes[cls.class_path()] = cls
        await self.book.unpark(cls.class_path())

    async def set_next_due(
        self,
        class_path: str,
        agent_id: str,
        due: float | None,
        agent_class: type[Agent] | None = None,
        asleep: bool = False,
        probe: str | None = None,
    ) -> None:
        """Record (durably) when an agent next needs waking; None removes it from the index. A class that
        cannot be imported by path comes along (`agent_class`) and is registered. An agent going to sleep
        (`asleep`) is woken at its due time exactly, or its alarm's `probe` (JSON) runs first; a live one
        only after `WAKE_GRACE_SECONDS`."""
        await self._loaded
        if agent_class is not None and class_path not in self._classes:
            await self.register_class(agent_class)
        await self.book.record((class_path, agent_id), due, asleep, probe)

    async def pending(self) -> dict[str, float]:
        """The book as `{"Class path|id": next_due}` (for operators and tests)."""
        await self._loaded
        return {f"{cp}|{aid}": due for (cp, aid), due in (await self.book.pending()).items()}

    async def stats(self) -> dict[str, int]:
        """How many wake-ups this scheduler made, how many its probes saved, and the most it ran at once
        (operators, tests)."""
        return {
            "woken": self.woken,
            "probed": self.probed,
            "peak_in_flight": self.peak_in_flight,
            "max_wakes": self.max_wakes,
        }

    async def _run(self) -> None:
        """Claim what is due, at most as many as there are free wake-up slots (`AGENT_SCHEDULER_MAX_WAKES`):
        the rest stays due in the book (leased by nobody on PostgreSQL) until a wake-up ends."""
        await self._loaded
        await self._keeper.current()  # its wake-ups' handles read the placement from it, in this process
        while True:
            free = self.max_wakes - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                claimed = await self.book.claim(free)
            except Exception as exc:  # the database is away: look again shortly
                logger.warning("reading the alarms failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_FIRST_SECONDS)
                continue
            for key, due in claimed:
                if key in self._in_flight:
                    continue  # a wake-up is already running; it reports the next due time
                self._in_flight.add(key)
                self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))
                task = asyncio.get_running_loop().create_task(self._wake(key, due))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _agent_class(self, key: AlarmKey) -> type[Agent] | None:
        """The class of a due agent: registered, or imported by path. If neither works (a class defined in a
        script, after a restart), the alarm is parked with the reason, in the book (`agentrt status` shows
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
            await self.book.park(key, reason)
            return None

    async def _probed_away(self, key: AlarmKey, due: float) -> bool:
        """Run the alarm's probe, if it carries one: True if it said "nothing yet" (the alarm moved to the
        time it named, and the agent sleeps on)."""
        probe_json = await self.book.probe(key, due)
        if probe_json is None:
            return False
        try:
            probe = AlarmProbe.model_validate_json(probe_json)
        except ValueError as exc:
            logger.warning("the probe of %s/%s is unreadable (%s); waking it", *key, exc)
            return False
        until = await run_probe(probe, self.storage_dir)
        if until is None:
            return False
        await self.book.defer(key, due, until)
        self.probed += 1
        metrics.ALARMS_PROBED.inc()
        return True

    async def _wake(self, key: AlarmKey, due: float) -> None:
        class_path, agent_id = key
        try:
            if await self._probed_away(key, due):
                return
            cls = await self._agent_class(key)
            if cls is None:
                return
            try:
                agent = await asyncio.to_thread(  # finding (or starting) its host blocks: keep the loop free
                    AgentHandle, cls, agent_id, storage_dir=self.storage_dir, namespace=self.namespace, create=False
                )
                next_due = await agent._run_due_schedules()
                self._failures.pop(key, None)
                self.woken += 1
            except AgentNotFoundError:
                logger.warning("%s/%s is due but was never created (or was deleted); forgetting it", *key)
                await self.book.forget(key, due)
                return
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                backoff = exponential_delay(failures, RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS)
                logger.warning("waking %s/%s failed (%s); retrying in %.1fs", class_path, agent_id, exc, backoff)
                await self.book.retry_in(key, due, backoff)
                return
            await self.book.release(key, due, next_due)
        except Exception as exc:  # the book itself failed (database away): the lease, or the heap, retries it
            logger.warning("recording the wake-up of %s/%s failed: %s", class_path, agent_id, exc)
        finally:
            self._in_flight.discard(key)
            self._slot_freed.set()
