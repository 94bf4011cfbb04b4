"""How a live agent tells its storage root's alarm scheduler when it next needs waking.

The scheduler is reached by its Ray name only (no import of the scheduler's code), so the agent side never
depends on the scheduler side: whoever creates hosts (`runtime.registry`, `runtime.init`, the scheduler
itself) has made sure the scheduler exists first.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from runtime.alarm_probes import AlarmProbe
from runtime.classes import is_script_class
from runtime.placement import scheduler_name

if TYPE_CHECKING:
    from runtime.agent import Agent

logger = logging.getLogger("runtime.alarms")

_schedulers: dict[tuple[str, str], Any] = {}


async def scheduler_for(storage_dir: Path, namespace: str) -> Any:
    """The scheduler actor of a storage root (looked up by name once per process)."""
    key = (str(storage_dir), namespace)
    handle = _schedulers.get(key)
    if handle is None:
        handle = await asyncio.to_thread(ray.get_actor, scheduler_name(storage_dir), namespace=namespace)
        _schedulers[key] = handle
    return handle


_registered: set[tuple[str, str, str]] = set()
"""(storage root, namespace, class path) of script-defined classes this process gave the scheduler."""


async def report_next_due(
    agent: Agent, due: float | None, asleep: bool = False, probe: AlarmProbe | None = None
) -> bool:
    """Record in the scheduler's durable index when `agent` next needs waking (None: never), whether it
    is going to sleep, and the probe its alarm then carries. Where the storage keeps the time itself
    (PostgreSQL), the agent's own row is marked asleep (with the probe) instead, and only a script-defined
    class is sent, once per process: the scheduler cannot import it by path."""
    probe_json = probe.model_dump_json() if probe is not None and asleep else None
    key = (str(agent.storage_dir), agent.namespace)
    cls = type(agent)
    script_class = cls if is_script_class(cls) else None
    try:
        if agent.storage.keeps_next_due:
            if asleep and due is not None:
                await agent.storage.mark_asleep(probe_json)
            if script_class is not None and (*key, agent.class_path()) not in _registered:
                scheduler = await scheduler_for(agent.storage_dir, agent.namespace)
                await scheduler.register_class.remote(script_class)
                _registered.add((*key, agent.class_path()))
            return True
        scheduler = await scheduler_for(agent.storage_dir, agent.namespace)
        await scheduler.set_next_due.remote(agent.class_path(), agent.id, due, script_class, asleep, probe_json)
        return True
    except Exception as exc:  # the local timer still fires; the next re-arm (or the leave) tries again
        _schedulers.pop(key, None)
        logger.warning("%s: could not report next due time to the alarm scheduler: %s", agent.name, exc)
        return False
