"""Schedules: when a callback is due, and what happens after it runs or fails.

Pure functions and the row model only; the agent persists rows in its own SQLite file and the alarm
scheduler wakes it. Kept apart so the timing rules (cron, backoff, validation) are testable on their own.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel

from runtime.storage import to_json

ScheduleKind = Literal["delayed", "scheduled", "cron"]
ScheduleStatus = Literal["pending", "failed"]

SCHEDULES_MIGRATIONS = [
    """
    CREATE TABLE _schedules (
        id TEXT PRIMARY KEY,
        callback TEXT NOT NULL,
        payload TEXT NOT NULL,
        kind TEXT NOT NULL,
        cron TEXT,
        due_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX _schedules_due ON _schedules(status, due_at);
    """
]


class InvalidScheduleError(ValueError):
    """A schedule request that cannot be honoured: bad `when`, unknown callback, unstorable payload."""


class Schedule(BaseModel):
    """One persisted schedule, as `get_schedules()` returns it."""

    id: str
    callback: str
    payload: Any = None
    kind: ScheduleKind
    cron: str | None = None
    due_at: float
    status: ScheduleStatus = "pending"
    attempts: int = 0
    last_error: str | None = None
    created_at: float


def resolve_when(
    when: float | int | datetime | str, *, now: float | None = None
) -> tuple[ScheduleKind, float, str | None]:
    """Turn `when` (seconds from now, an aware or UTC-naive datetime, or a cron string) into (kind, due, cron)."""
    now = time.time() if now is None else now
    if isinstance(when, bool):
        raise InvalidScheduleError("when must be seconds, a datetime or a cron string, not a bool")
    if isinstance(when, int | float):
        if when != when or when in (float("inf"), float("-inf")):
            raise InvalidScheduleError(f"when={when!r} is not a finite number of seconds")
        if when < 0:
            raise InvalidScheduleError(f"when={when!r} is in the past: delays must be >= 0 seconds")
        return "delayed", now + float(when), None
    if isinstance(when, datetime):
        aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        due = aware.timestamp()
        if due < now - 1.0:
            raise InvalidScheduleError(f"when={aware.isoformat()} is in the past")
        return "scheduled", due, None
    if isinstance(when, str):
        expression = when.strip()
        if not croniter.is_valid(expression):
            raise InvalidScheduleError(f"when={when!r} is not a valid cron expression")
        return "cron", next_cron_time(expression, now), expression
    raise InvalidScheduleError(f"when must be seconds, a datetime or a cron string, got {type(when).__name__}")


def next_cron_time(expression: str, after: float) -> float:
    """The first time strictly after `after` that `expression` (UTC; 5 or 6 fields, seconds last) names."""
    return float(croniter(expression, datetime.fromtimestamp(after, UTC)).get_next(float))


def encode_payload(payload: Any) -> str:
    """JSON text of a payload; `InvalidScheduleError` if it cannot survive a restart as JSON."""
    try:
        return to_json(payload)
    except TypeError as exc:
        raise InvalidScheduleError(f"payload {str(exc).removeprefix('value ')}") from None
