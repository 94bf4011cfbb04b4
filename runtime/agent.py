"""`Agent`: the base class of durable agents (the Durable Object analogue).

An agent has an identity (`id`, `name`), a SQLite file (`storage`), typed state (`state`, `set_state`),
schedules (`schedule`, `cancel_schedule`, `get_schedules`) and lifecycle hooks (`on_start`, `on_error`).
It lives in a host process (see `runtime.host`) among other agents, is activated on its first call
and hibernates when idle, but it is a plain class: it can also be built directly in a process for tests
and scripts.

Turns: methods decorated with `@turn` run one at a time, in arrival order, under an asyncio lock (FIFO);
a turn calling another turn of the same agent joins it instead of deadlocking. Methods decorated with
`@read` never wait behind a turn: they only wait until start-up finished. A call through a handle always
waits for start-up first, so a plain (undecorated) method may use `self.storage` on a brand-new agent.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from pydantic import BaseModel

from runtime import metrics
from runtime.backoff import exponential_delay
from runtime.errors import AgentIdConflictError
from runtime.ids import actor_name, validate_agent_id
from runtime.schedules import (
    SCHEDULES_MIGRATIONS,
    InvalidScheduleError,
    Schedule,
    encode_payload,
    next_cron_time,
    resolve_when,
)
from runtime.settings import runtime_settings
from runtime.storage import AgentStorage, Migration
from runtime.turn_order import TURN_TICKET_KWARG, SubmissionOrder

logger = logging.getLogger("runtime.agent")

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A", bound="Agent")

_current_turn: contextvars.ContextVar[object | None] = contextvars.ContextVar("agent_turn", default=None)

DueReporter = Callable[["Agent", float | None], Awaitable[bool]]
"""How an agent tells the alarm scheduler its next due time; returns whether the report got through."""

# Names a schedule may never call back: the runtime's own machinery and lifecycle hooks.
_RESERVED_CALLBACKS = frozenset(
    {"schedule", "cancel_schedule", "get_schedules", "set_state", "on_start", "on_error", "ready"}
)

AGENT_ID_KEY = "_agent_id"
"""The id an agent's file belongs to, recorded by its first activation."""

SCHEDULE_RETRY_MAX_SECONDS = 300.0
"""The longest wait before a failed schedule is tried again."""


F = TypeVar("F", bound=Callable[..., Any])


def internal(fn: F) -> F:
    """Mark a method as the agent's own: its schedules and mixins call it, handles refuse it (so a Ray
    client in the namespace cannot run a schedule callback or an access hook out of turn)."""
    fn.__agent_internal__ = True  # type: ignore[attr-defined]
    return fn


def turn(fn: Callable[Concatenate[A, P], Awaitable[R]]) -> Callable[Concatenate[A, P], Awaitable[R]]:
    """Mark an async method as a turn: it runs alone, in arrival order, after start-up."""

    @functools.wraps(fn)
    async def run_as_turn(self: A, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _run_turn(self, fn, args, kwargs)

    run_as_turn.__agent_turn__ = True  # type: ignore[attr-defined]
    run_as_turn.__signature__ = _with_ticket_parameter(fn)  # type: ignore[attr-defined]
    del run_as_turn.__wrapped__  # Ray unwraps to read signatures: make it read the one above
    return run_as_turn


def _with_ticket_parameter(fn: Callable[..., Any]) -> inspect.Signature:
    """`fn`'s signature plus the keyword-only ticket handles send (Ray checks call signatures)."""
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    ticket = inspect.Parameter(TURN_TICKET_KWARG, inspect.Parameter.KEYWORD_ONLY, default=None)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, ticket)
    else:
        params.append(ticket)
    return signature.replace(parameters=params)


def read(fn: Callable[Concatenate[A, P], Awaitable[R]]) -> Callable[Concatenate[A, P], Awaitable[R]]:
    """Mark an async method as a read: it waits for start-up only, never for a running turn. A read changes
    nothing, so a handle sends it again after its host crashed mid-call."""

    @functools.wraps(fn)
    async def run_as_read(self: A, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _run_read(self, fn, args, kwargs)

    run_as_read.__agent_read__ = True  # type: ignore[attr-defined]
    return run_as_read


# The wrappers above delegate to these module-level functions so that Ray (cloudpickle) serialises
# agent classes defined in scripts by reference to this module instead of copying the ContextVar.
async def _run_turn(agent: Agent, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    ticket = kwargs.pop(TURN_TICKET_KWARG, None)
    if _current_turn.get() is agent._turn_token:
        return await fn(agent, *args, **kwargs)
    if ticket is not None:
        await agent._turn_order.admit(*ticket)
    # No await between admission and joining the lock's FIFO queue: admission order is turn order.
    async with agent._turn_lock:
        token = _current_turn.set(agent._turn_token)
        started, outcome = time.perf_counter(), "ok"
        try:
            await agent._ensure_started()
            return await fn(agent, *args, **kwargs)
        except Exception as exc:
            outcome = "error"
            await agent._report_error(exc, during=fn.__name__)
            raise
        finally:
            _current_turn.reset(token)
            kind = agent.agent_class_name()
            metrics.TURNS.inc(agent_class=kind, outcome=outcome)
            metrics.TURN_SECONDS.observe(time.perf_counter() - started, agent_class=kind)


async def _run_read(agent: Agent, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    if _current_turn.get() is not agent._turn_token:
        await agent._ensure_started()
    return await fn(agent, *args, **kwargs)


class Agent:
    """Base class for durable agents. Subclass it, declare `state_model` and `migrations`, add methods."""

    state_model: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of `self.state`; its defaults are the initial state."""

    migrations: ClassVar[list[Migration]] = []
    """This class's own schema steps (each class in the MRO keeps its own list and version)."""

    idle_seconds: ClassVar[float | None] = None
    """Seconds with nothing to do before this agent hibernates; None: the host's `AGENT_IDLE_SECONDS`."""

    schedule_retry_base_seconds: ClassVar[float] = 2.0
    schedule_max_retries: ClassVar[int] = 6

    def __init__(self, agent_id: str, storage_dir: str | Path | None = None, namespace: str | None = None) -> None:
        settings = runtime_settings()
        self.id: str = validate_agent_id(agent_id)
        self.name: str = actor_name(self.agent_class_name(), agent_id)
        self.namespace: str = namespace or settings.namespace
        self.storage_dir: Path = Path(storage_dir or settings.storage_dir).resolve()
        self.storage = AgentStorage(
            self.storage_path(self.storage_dir, agent_id),
            synchronous=settings.sqlite_synchronous,
            journal=settings.sqlite_journal,
        )
        self._state: BaseModel | None = None
        self._turn_lock = asyncio.Lock()
        self._turn_order = SubmissionOrder()
        self._turn_token = object()
        self._started: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reported_due: float | None | object = _UNREPORTED
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
        return Path(storage_dir) / cls.agent_class_name() / f"{validate_agent_id(agent_id)}.sqlite3"

    @classmethod
    def class_path(cls) -> str:
        """`module:QualName`, how the alarm scheduler re-creates this agent after a cluster restart."""
        return f"{cls.__module__}:{cls.__qualname__}"

    # -- start-up --------------------------------------------------------------------------------------
    def _begin_start(self) -> asyncio.Future[None]:
        if self._started is None:
            self._started = _start_task(self)
        return self._started

    async def _ensure_started(self) -> None:
        await asyncio.shield(self._begin_start())

    async def ready(self) -> bool:
        """Wait until storage is open, migrations ran and `on_start` returned."""
        await self._ensure_started()
        return True

    async def _start(self) -> None:
        await self.storage.open()
        recorded = await self.storage.setdefault(AGENT_ID_KEY, self.id)
        if recorded != self.id:  # before anything is read or armed: never run over another agent's data
            await self.storage.close()
            raise AgentIdConflictError(self.id, recorded)
        await self.storage.take_epoch()  # from here on, a newer activation fences this one off
        self.storage.on_fenced = self._fenced
        await self.storage.migrate("runtime.Agent", SCHEDULES_MIGRATIONS)
        for cls in reversed(type(self).__mro__):
            steps = cls.__dict__.get("migrations")
            if steps:
                await self.storage.migrate(cls.__dict__.get("migration_scope", cls.__qualname__), steps)
        if self.state_model is not None:
            self._state = await self.storage.get("_state", model=self.state_model) or self.state_model()
        await self.on_start()
        await self._rearm()

    # -- lifecycle hooks -------------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Called once per activation after storage is loaded: first creation, restart, or wake-up.

        Don't call `schedule()` here unconditionally: it would add a duplicate on every restart.
        """

    async def on_error(self, error: BaseException, *, during: str) -> None:
        """Called when a turn or a schedule callback raises. The default logs it (without a traceback)."""
        logger.warning("%s: %s raised %s: %s", self.name, during, type(error).__name__, error)

    async def _report_error(self, error: BaseException, *, during: str) -> None:
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

    # -- schedules -------------------------------------------------------------------------------------
    @turn
    async def schedule(self, when: float | int | datetime | str, callback: str, payload: Any = None) -> Schedule:
        """Call `self.<callback>(payload)` at `when` (seconds, datetime, or cron). Durable on return."""
        self._validate_callback(callback)
        kind, due_at, cron = resolve_when(when)
        payload_json = encode_payload(payload)
        now = time.time()
        schedule = Schedule(
            id=uuid.uuid4().hex,
            callback=callback,
            payload=payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload,
            kind=kind,
            cron=cron,
            due_at=due_at,
            created_at=now,
        )
        await self.storage.execute(
            "INSERT INTO _schedules(id, callback, payload, kind, cron, due_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (schedule.id, callback, payload_json, kind, cron, due_at, now),
        )
        await self._rearm()
        return schedule

    @turn
    async def cancel_schedule(self, schedule_id: str) -> bool:
        """Remove a schedule; return whether it existed. A cancelled schedule never fires."""
        removed = await self.storage.execute("DELETE FROM _schedules WHERE id = ?", (schedule_id,)) > 0
        await self._rearm()
        return removed

    @read
    async def get_schedules(self, *, status: str | None = None) -> list[Schedule]:
        """Persisted schedules, soonest first (`status` = "pending" or "failed" to filter)."""
        sql = "SELECT * FROM _schedules"
        params: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            params = (status,)
        rows = await self.storage.fetchall(sql + " ORDER BY due_at", params)
        return [_schedule_from_row(row) for row in rows]

    def _validate_callback(self, callback: object) -> None:
        if not isinstance(callback, str) or not callback.isidentifier():
            raise InvalidScheduleError(f"callback must be a method name, got {callback!r}")
        if callback.startswith("_") or callback in _RESERVED_CALLBACKS:
            raise InvalidScheduleError(f"callback {callback!r} is not allowed (private or reserved)")
        if not callable(getattr(self, callback, None)):
            raise InvalidScheduleError(f"{type(self).__name__} has no method {callback!r}")

    @turn
    async def _run_due_schedules(self) -> float | None:
        """Run every due pending schedule, oldest first; return the next due time (or None).

        At-least-once: a row is deleted (or advanced, for cron) only after its callback returned; a
        callback that raises is retried with exponential backoff, then parked as failed.
        """
        while True:
            row = await self.storage.fetchone(
                "SELECT * FROM _schedules WHERE status = 'pending' AND due_at <= ? ORDER BY due_at LIMIT 1",
                (time.time(),),
            )
            if row is None:
                break
            await self._run_one(_schedule_from_row(row))
        return await self._rearm()

    async def _run_one(self, schedule: Schedule) -> None:
        try:
            result = getattr(self, schedule.callback)(schedule.payload)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            attempts = schedule.attempts + 1
            message = f"{type(exc).__name__}: {exc}"[:1000]
            parked = attempts > self.schedule_max_retries
            metrics.SCHEDULE_RUNS.inc(outcome="parked" if parked else "retry")
            if parked:
                await self.storage.execute(
                    "UPDATE _schedules SET status = 'failed', attempts = ?, last_error = ? WHERE id = ?",
                    (attempts, message, schedule.id),
                )
                logger.error(
                    "%s: schedule %s (%s) failed %d times; parked as failed: %s",
                    self.name,
                    schedule.id,
                    schedule.callback,
                    attempts,
                    message,
                )
            else:
                delay = exponential_delay(attempts, self.schedule_retry_base_seconds, SCHEDULE_RETRY_MAX_SECONDS)
                await self.storage.execute(
                    "UPDATE _schedules SET attempts = ?, last_error = ?, due_at = ? WHERE id = ?",
                    (attempts, message, time.time() + delay, schedule.id),
                )
            await self._report_error(exc, during=f"schedule:{schedule.callback}")
            return
        metrics.SCHEDULE_RUNS.inc(outcome="ok")
        if schedule.kind == "cron" and schedule.cron:
            await self.storage.execute(
                "UPDATE _schedules SET due_at = ?, attempts = 0, last_error = NULL WHERE id = ?",
                (next_cron_time(schedule.cron, max(time.time(), schedule.due_at)), schedule.id),
            )
        else:
            await self.storage.execute("DELETE FROM _schedules WHERE id = ?", (schedule.id,))

    async def _next_due(self) -> float | None:
        row = await self.storage.fetchone("SELECT MIN(due_at) AS due FROM _schedules WHERE status = 'pending'")
        return None if row is None or row["due"] is None else float(row["due"])

    async def _rearm(self) -> float | None:
        """Recompute the next wake-up from the table (never from memory) and arm both alarms.

        The local timer gives precise firing while this instance lives; the alarm scheduler's durable
        index wakes the agent when it does not (after a crash, a cluster restart or hibernation).
        """
        due = await self._next_due()
        self._arm_local_timer(due)
        await self._report_next_due(due)
        return due

    async def _report_next_due(self, due: float | None) -> bool:
        if due == self._reported_due:
            return True
        if self._report_due is not None and not await self._report_due(self, due):
            return False
        self._reported_due = due
        return True

    def _arm_local_timer(self, due: float | None) -> None:
        self._stop_timer()
        self._next_due_at = due
        if due is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - time.time())
        # A fresh context: the timer must not inherit "inside a turn" from whoever armed it.
        self._timer = loop.call_at(loop.time() + delay, self._fire_local_timer, context=contextvars.Context())

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire_local_timer(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._run_due_schedules())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- small introspection helpers -------------------------------------------------------------------
    @read
    async def process_id(self) -> int:
        """The OS process id serving this agent (tests use it to SIGKILL the actor)."""
        return os.getpid()

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
    def _is_quiet(self) -> bool:
        """Nothing running inside: no turn holds or waits for the lock, no timer-fired work is running."""
        return not self._background and not self._turn_lock.locked()

    async def _prepare_to_leave(self) -> bool:
        """Make sure the scheduler's index holds the next due time (re-read from the table), so a due alarm
        wakes this agent after it left. False if the scheduler could not be told: then it must stay."""
        self._stop_timer()
        due = await self._next_due()
        if await self._report_next_due(due):
            return True
        self._arm_local_timer(due)  # staying: keep firing locally
        return False

    async def close(self) -> None:
        """Release what this activation holds: timers, background work, storage. Subclasses that open more
        (another file, a client) extend it, calling `super().close()`. The host calls it on hibernation."""
        self._stop_timer()
        for task in list(self._background):
            task.cancel()
        await self.storage.close()


_UNREPORTED = object()


def _start_task(agent: Agent) -> asyncio.Task[None]:
    context = contextvars.copy_context()
    context.run(_current_turn.set, agent._turn_token)  # start-up acts as a turn
    return asyncio.get_running_loop().create_task(agent._start(), context=context)


def _schedule_from_row(row: Any) -> Schedule:
    import json

    return Schedule(
        id=row["id"],
        callback=row["callback"],
        payload=json.loads(row["payload"]),
        kind=row["kind"],
        cron=row["cron"],
        due_at=row["due_at"],
        status=row["status"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=row["created_at"],
    )
