"""`Agent`: the base class of durable agents (the Durable Object analogue).

An agent has an identity (`id`, `name`), a SQLite file (`storage`), typed state (`state`, `set_state`),
schedules (`schedule`, `cancel_schedule`, `get_schedules`) and lifecycle hooks (`on_start`, `on_error`).
It lives in a host process (see `runtime.host`) among other agents, is activated on its first call
and hibernates when idle, but it is a plain class: it can also be built directly in a process for tests
and scripts.

Its methods are marked `@turn` (one at a time, in arrival order), `@read` (never behind a turn) or
`@internal` (not callable through a handle): see `runtime.methods`. Its schedules and their alarms are
`runtime.agent_schedules`. A call through a handle always waits for start-up first, so a plain
(undecorated) method may use `self.storage` on a brand-new agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from runtime.agent_schedules import UNREPORTED, AgentSchedules, DueReporter
from runtime.alarm_index import CLASS_PATH_KEY
from runtime.errors import AgentIdConflictError
from runtime.failures import is_callers_mistake, record_failure
from runtime.ids import actor_name, validate_agent_id
from runtime.methods import internal, read, start_as_turn, turn
from runtime.schedules import SCHEDULES_MIGRATIONS
from runtime.storage import Migration
from runtime.storage_api import StorageAPI, decode, to_json
from runtime.storage_choice import agent_storage, sqlite_path
from runtime.storage_root import resolve_namespace, resolve_storage_dir
from runtime.turn_order import SubmissionOrder

logger = logging.getLogger("runtime.agent")

__all__ = ["AGENT_ID_KEY", "Agent", "DueReporter", "internal", "read", "turn"]

AGENT_ID_KEY = "_agent_id"
"""The id an agent's file belongs to, recorded by its first activation."""


class Agent(AgentSchedules):
    """Base class for durable agents. Subclass it, declare `state_model` and `migrations`, add methods."""

    state_model: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of `self.state`; its defaults are the initial state."""

    migrations: ClassVar[list[Migration]] = []
    """This class's own schema steps (each class in the MRO keeps its own list and version)."""

    migration_scope: ClassVar[str | None] = None
    """The name this class's `migrations` are versioned under; None: the class's qualified name. Read on
    the class that declares the `migrations` only (not inherited), so that a subclass, or a class renamed
    or moved, keeps the version its stored files already carry."""

    idle_seconds: ClassVar[float | None] = None
    """Seconds with nothing to do before this agent hibernates; None: the host's `AGENT_IDLE_SECONDS`."""

    idle_seconds_while_waiting: ClassVar[float | None] = None
    """Seconds with nothing to do before this agent hibernates when all it has left is an alarm at least a
    few seconds away (a pending approval's next check): waiting then costs no memory, and the alarm or the
    next call wakes it. None: the same as `idle_seconds`."""

    def __init__(self, agent_id: str, storage_dir: str | Path | None = None, namespace: str | None = None) -> None:
        self.id: str = validate_agent_id(agent_id)
        self.name: str = actor_name(self.agent_class_name(), agent_id)
        self.namespace: str = resolve_namespace(namespace)
        self.storage_dir: Path = resolve_storage_dir(storage_dir)
        self.storage: StorageAPI = agent_storage(self.agent_class_name(), agent_id, self.storage_dir)
        self._state: BaseModel | None = None
        self._deleting = False
        """Set by `delete_everything`: the agent is being erased, and refuses further calls."""
        self._turn_lock = asyncio.Lock()
        self._turn_order = SubmissionOrder()
        self._turn_token = object()
        self._started: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reported_due: float | None | object = UNREPORTED
        self._background: set[asyncio.Task[Any]] = set()
        self._next_due_at: float | None = None
        self._report_due: DueReporter | None = None  # set by the host; None: nobody to tell (in-process use)
        self._evict: Callable[[], None] | None = None  # set by the host: drop this instance (fenced off)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # built outside an event loop: start lazily on first use
        self._begin_start()

    # -- identity --------------------------------------------------------------------------------------
    @classmethod
    def agent_class_name(cls) -> str:
        """The class part of the actor name and storage folder (the class name by default)."""
        return cls.__name__

    @classmethod
    def storage_path(cls, storage_dir: str | Path, agent_id: str) -> Path:
        """The SQLite file of agent `agent_id` under `storage_dir` (it exists once the agent was created)."""
        return sqlite_path(Path(storage_dir), cls.agent_class_name(), validate_agent_id(agent_id))

    @classmethod
    def class_path(cls) -> str:
        """`module:QualName`, how the alarm scheduler re-creates this agent after a cluster restart."""
        return f"{cls.__module__}:{cls.__qualname__}"

    # -- start-up --------------------------------------------------------------------------------------
    def _begin_start(self) -> asyncio.Future[None]:
        if self._started is None:
            self._started = start_as_turn(self)
        return self._started

    async def _ensure_started(self) -> None:
        await asyncio.shield(self._begin_start())

    async def ready(self) -> bool:
        """Wait until storage is open, migrations ran and `on_start` returned."""
        await self._ensure_started()
        return True

    async def _start(self) -> None:
        await self.storage.open()
        try:  # before anything is read or armed: never run over another agent's data
            await self._record_identity()
        except AgentIdConflictError:
            await self.storage.close()
            raise
        await self.storage.take_epoch()  # from here on, a newer activation fences this one off
        self.storage.on_fenced = self._fenced
        await self.storage.migrate("runtime.Agent", SCHEDULES_MIGRATIONS)
        await self.storage.track_next_due(self.class_path())
        for cls in reversed(type(self).__mro__):
            steps = cls.__dict__.get("migrations")
            if steps:
                await self.storage.migrate(cls.__dict__.get("migration_scope") or cls.__qualname__, steps)
        if self.state_model is not None:
            self._state = await self.storage.get("_state", model=self.state_model) or self.state_model()
        await self.on_start()
        await self._rearm()

    async def _record_identity(self) -> None:
        """Record whose storage this is (the id: kept forever, refused if another's) and the class path the
        alarm scheduler wakes it with (kept current: a lost alarm index is rebuilt from it), in one
        transaction that writes nothing when both are already there."""
        async with self.storage.transaction() as tx:
            await tx.execute(
                "INSERT INTO _kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                (AGENT_ID_KEY, to_json(self.id)),
            )
            row = await tx.fetchone("SELECT value FROM _kv WHERE key = ?", (AGENT_ID_KEY,))
            recorded = decode(row["value"], None)
            if recorded != self.id:
                raise AgentIdConflictError(self.id, recorded)
            await tx.execute(
                "INSERT INTO _kv(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value WHERE _kv.value <> excluded.value",
                (CLASS_PATH_KEY, to_json(self.class_path())),
            )

    # -- lifecycle hooks -------------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Called once per activation after storage is loaded: first creation, restart, or wake-up.

        Don't call `schedule()` here unconditionally: it would add a duplicate on every restart.
        """

    async def on_error(self, error: BaseException, *, during: str) -> None:
        """Called when a turn or a schedule callback raises. The default logs it, with its traceback unless
        it answers the caller's own mistake (a bad token, a stranger's thread): a bug's traceback in the
        host's log is what finds it (the journal keeps one line)."""
        trace = None if is_callers_mistake(error) else error
        logger.warning("%s: %s raised %s: %s", self.name, during, type(error).__name__, error, exc_info=trace)

    async def on_turn_while_busy(self, method: str, args: tuple[Any, ...]) -> None:
        """A caller's turn (`method` with `args`) arrives while another turn runs, before it queues: raise to
        refuse it (the caller gets the error), or cut the running turn short. The default lets it queue."""

    async def _report_error(self, error: BaseException, *, during: str) -> None:
        """Journal `error` in the storage root (`runtime.failures`: `agentrt logs`, the terminal of
        `agentrt serve`), then call the `on_error` hook."""
        record_failure(self.storage_dir, self.name, during, error)
        try:
            await self.on_error(error, during=during)
        except Exception:  # an error hook must never mask the original error
            logger.exception("%s: on_error itself raised", self.name)

    # -- state -----------------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        """The agent's typed state (an instance of `state_model`)."""
        if self.state_model is None:
            raise AttributeError(f"{type(self).__name__} declares no state_model")
        if self._state is None:
            raise RuntimeError("state is not loaded yet: await ready() first")
        return self._state

    @turn
    async def set_state(self, state: BaseModel | dict[str, Any]) -> Any:
        """Validate, persist, then publish a new state; returns it."""
        if self.state_model is None:
            raise AttributeError(f"{type(self).__name__} declares no state_model")
        data = state.model_dump() if isinstance(state, BaseModel) else state
        new_state = self.state_model.model_validate(data)
        await self.storage.put("_state", new_state)
        self._state = new_state
        return new_state

    @read
    async def get_state(self) -> Any:
        return self.state

    def _fenced(self) -> None:
        """A newer activation took this agent's file (its write just failed): stop all this instance would
        do by itself (its timer, its background work) and leave the host; the newer one carries on."""
        logger.warning("%s: a newer activation took its file; this one stops", self.name)
        self._stop_timer()
        current = asyncio.current_task()
        for task in list(self._background):
            if task is not current:
                task.cancel()
        if self._evict is not None:
            self._evict()

    # -- hibernation -----------------------------------------------------------------------------------
    @internal
    async def delete_everything(self) -> None:
        """Erase this agent (call it in a turn): its schedules are cancelled now (its alarm goes); once the turn
        and the calls in flight end, it leaves its host and its storage is erased (its SQLite file, or its
        rows), so its id is unknown again: a call that may not create it is `AgentNotFoundError`, one that may
        creates a new, empty agent. Calls that arrive in between are refused as not found. The analogue of
        a Durable Object's `deleteAll()` with `deleteAlarm()`."""
        await self.storage.execute("DELETE FROM _schedules")
        await self._rearm()
        self._deleting = True

    def _is_quiet(self) -> bool:
        """Nothing running inside: no turn holds or waits for the lock, no timer-fired work is running."""
        return not self._background and not self._turn_lock.locked()

    async def close(self) -> None:
        """Release what this activation holds: timers, background work, storage. Subclasses that open more
        (another file, a client) extend it, calling `super().close()`. The host calls it on hibernation."""
        self._stop_timer()
        for task in list(self._background):
            task.cancel()
        await self.storage.close()

    async def _erase(self) -> None:
        """The end of `delete_everything`: close, and erase the storage (the host calls it as it leaves)."""
        self._stop_timer()
        for task in list(self._background):
            task.cancel()
        await self.storage.erase()
