"""Alarm probes: a cheap look the scheduler takes in place of waking a sleeping agent.

Some alarms are mostly "nothing yet": an agent asleep until its user answers checks a remote service now
and then, and almost every check says "still waiting". Waking the agent for each one (open its storage,
run `on_start`, run the schedule, report again) costs far more than the look itself. So an agent that goes
to sleep may attach an `AlarmProbe` to its next alarm (`Agent.alarm_probe`): the name of an importable
function and an opaque payload (sealed by the agent's side, if it holds anything secret). When the alarm
is due, the scheduler calls the function first, with no agent activated:

- it returns a time: nothing to do yet, the alarm is moved to that time (never past `wake_by`, the agent's
  next other schedule) and the agent sleeps on;
- it returns None, or raises, or takes longer than `PROBE_TIMEOUT_SECONDS`: the agent is woken as it would
  have been without a probe, and its own schedule does the real work.

A probe must therefore be safe to skip, and anything it learns that must not be lost (an answer a service
gives only once) it keeps durably itself before returning None: the runtime carries no answers. The
probe is dropped as soon as the agent is live again (its next report carries none).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger("runtime.scheduler")

PROBE_TIMEOUT_SECONDS = 30.0
"""The longest a probe may take before the scheduler gives up on it and wakes the agent."""

Prober = Callable[[str, Path], Awaitable[float | None]]
"""`async def prober(payload, storage_dir) -> defer_until | None`: the function an `AlarmProbe` names."""


class AlarmProbe(BaseModel):
    """What a sleeping agent's next alarm carries: `prober` (`module:function`, a `Prober`), its `payload`,
    and `wake_by`, the due time of the agent's next other schedule (a probe never defers past it)."""

    model_config = ConfigDict(frozen=True)

    prober: str
    payload: str
    wake_by: float | None = None


_probers: dict[str, Prober] = {}


def _prober(path: str) -> Prober:
    found = _probers.get(path)
    if found is None:
        module_name, _, name = path.partition(":")
        found = _probers[path] = getattr(importlib.import_module(module_name), name)
    return found


async def run_probe(probe: AlarmProbe, storage_dir: Path) -> float | None:
    """When the alarm should fire next instead of now (a time in the future), or None: wake the agent."""
    try:
        until = await asyncio.wait_for(_prober(probe.prober)(probe.payload, storage_dir), PROBE_TIMEOUT_SECONDS)
    except Exception as exc:  # a probe is an optimisation: whatever goes wrong, the agent's own check runs
        logger.warning("alarm probe %s failed (%s: %s); waking the agent", probe.prober, type(exc).__name__, exc)
        return None
    if until is None or until <= time.time():
        return None
    return until if probe.wake_by is None else min(until, probe.wake_by)
