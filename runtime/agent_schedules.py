"""`AgentSchedules`: the schedules part of `Agent` (`schedule`, `cancel_schedule`, `get_schedules`) and the
two alarms that fire them.

A schedule is a row in the agent's own file, so it survives anything the agent does. Two alarms watch the
soonest one: a local timer while the agent is live (precise), and the alarm scheduler's durable index
(`runtime.scheduler`) that wakes the agent when it is not (after a crash, a cluster restart, hibernation).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel

from runtime import metrics
from runtime.alarm_probes import AlarmProbe
from runtime.backoff import exponential_delay
from runtime.errors import AgentNotFoundError
from runtime.methods import read, turn
from runtime.schedules import InvalidScheduleError, Schedule, encode_payload, next_cron_time, resolve_when
from runtime.settings import runtime_settings
from runtime.storage import AgentStorage

logger = logging.getLogger("runtime.agent")

DueReporter = Callable[["AgentSchedules", float | None, bool, AlarmProbe | None], Awaitable[bool]]
"""How an agent tells the alarm scheduler its next due time, whether it is going to sleep (then only the
scheduler can fire it: at its due time, without the grace a live agent's own timer gets) and, if so, the
probe its alarm carries (`runtime.alarm_probes`); returns whether the report got through."""

# Names a schedule may never call back: the runtime's own machinery and lifecycle hooks.
_RESERVED_CALLBACKS = frozenset(
    {
        "schedule",
        "cancel_schedule",
        "get_schedules",
        "set_state",
        "on_start",
        "on_error",
        "ready",
        "keeps_retrying",
        "alarm_probe",
    }
)

SCHEDULE_RETRY_MAX_SECONDS = 300.0
"""The longest wait before a failed schedule is tried again."""

UNREPORTED = object()
"""`_reported_due` before the first report (None is a real value: nothing due)."""


class AgentSchedules:
    """Schedules and their alarms; `Agent` inherits them (and sets the attributes declared here)."""

    schedule_retry_base_seconds: ClassVar[float] = 2.0
    schedule_max_retries: ClassVar[int] = 6

    name: str
    storage: AgentStorage
    _timer: asyncio.TimerHandle | None
    _reported_due: float | None | object
    _next_due_at: float | None
    _background: set[asyncio.Task[Any]]
    _report_due: DueReporter | None
    _report_error: Callable[..., Awaitable[None]]  # Agent's: on_error, guarded

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

    def keeps_retrying(self, schedule: Schedule) -> bool:
        """Whether a failing `schedule` is retried (with backoff, at most every `SCHEDULE_RETRY_MAX_SECONDS`)
        for as long as it fails instead of being parked as failed after `schedule_max_retries`. Override it
        for a callback whose work cannot wait for the next activation to re-arm it (an approval check while
        the user may still decide); such a callback must end its own work when retrying stops making sense."""
        return False

    async def alarm_probe(self, schedule: Schedule) -> AlarmProbe | None:
        """What the scheduler may run in place of waking this agent for `schedule`, its soonest, as it goes to
        sleep (`runtime.alarm_probes`): a cheap look that says "nothing yet, come back at T" without an
        activation. None (the default): the agent is woken. Override it for a schedule that mostly finds
        nothing to do (an approval check while the user has not answered)."""
        return None

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
            parked = attempts > self.schedule_max_retries and not self.keeps_retrying(schedule)
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

    async def _report_next_due(
        self, due: float | None, *, asleep: bool = False, probe: AlarmProbe | None = None
    ) -> bool:
        if due == self._reported_due and not (asleep and due is not None):
            return True
        if self._report_due is not None and not await self._report_due(self, due, asleep, probe):
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
        task.add_done_callback(self._local_run_done)

    def _local_run_done(self, task: asyncio.Task[float | None]) -> None:
        """A timer-fired run ended: say why if it failed (the durable alarm still wakes the agent for what is
        due). An agent deleted meanwhile (its retention, say) has nothing left to run: that is no failure."""
        self._background.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is None or isinstance(exc, AgentNotFoundError):
            return
        logger.warning("%s: running its due schedules failed (%s: %s)", self.name, type(exc).__name__, exc)

    # -- leaving -------------------------------------------------------------------------------------------
    async def _prepare_to_leave(self) -> bool:
        """Make sure the scheduler's index holds the next due time (re-read from the table), so a due alarm
        wakes this agent after it left. False if the scheduler could not be told: then it must stay."""
        self._stop_timer()
        due = await self._next_due()
        if await self._report_next_due(due, asleep=True, probe=await self._probe_for_sleep(due)):
            return True
        self._arm_local_timer(due)  # staying: keep firing locally
        return False

    async def _probe_for_sleep(self, due: float | None) -> AlarmProbe | None:
        """The probe of the soonest schedule, bounded by the next one (None if it has none, or fails, or the
        probes are off: `AGENT_ALARM_PROBES`)."""
        if due is None or not runtime_settings().alarm_probes:
            return None
        rows = await self.storage.fetchall("SELECT * FROM _schedules WHERE status = 'pending' ORDER BY due_at LIMIT 2")
        if not rows:
            return None
        try:
            probe = await self.alarm_probe(_schedule_from_row(rows[0]))
        except Exception as exc:  # no probe is always safe: the alarm wakes the agent
            logger.warning("%s: alarm_probe failed (%s); its alarm will wake it", self.name, exc)
            return None
        if probe is None or len(rows) < 2:
            return probe
        return probe.model_copy(update={"wake_by": float(rows[1]["due_at"])})


def _schedule_from_row(row: Any) -> Schedule:
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
