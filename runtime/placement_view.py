"""What this process knows of each storage root's placement: read from the root's keeper once, replaced
whenever a newer one is seen (a host's `AgentMovedError` carries it, a host is told by the keeper).

A process with an old view is never wrong for long, and never unsafe: hosts decide who runs an agent under
their own (newer) view and refuse the rest before anything runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

from runtime.placement import Placement
from runtime.placement_keeper import ensure_keeper
from runtime.settings import runtime_settings

logger = logging.getLogger("runtime.placement")

_known: dict[tuple[str, str, str], Placement] = {}


def _key(storage_dir: Path, namespace: str) -> tuple[str, str, str]:
    """Per Ray session (a cluster restarted is another), root (resolved by the caller: this runs per call)
    and namespace."""
    return (ray.get_runtime_context().get_session_name(), str(storage_dir), namespace)


def known_placement(storage_dir: Path, namespace: str) -> Placement | None:
    """What this process knows, without asking anyone (None: nothing yet)."""
    return _known.get(_key(storage_dir, namespace))


def current_placement(storage_dir: Path, namespace: str) -> Placement:
    """The placement as this process knows it; the first time, asked of the keeper (blocking)."""
    placement = known_placement(storage_dir, namespace)
    if placement is None:
        keeper = ensure_keeper(storage_dir, namespace, runtime_settings().hosts)
        placement = learn(storage_dir, namespace, ray.get(keeper.current.remote()))
        _say_if_configured_differently(placement)
    return placement


async def fetch_placement(storage_dir: Path, namespace: str) -> Placement:
    """The keeper's placement now (learnt here too): for hosts, which must not wait on a stale view."""
    keeper = ensure_keeper(storage_dir, namespace, runtime_settings().hosts)
    return learn(storage_dir, namespace, await keeper.current.remote())


def learn(storage_dir: Path, namespace: str, placement: Placement) -> Placement:
    """Keep `placement` if it is newer than what this process knows; returns the newest known."""
    key = _key(storage_dir, namespace)
    known = _known.get(key)
    if known is None or placement.version > known.version:
        _known[key] = placement
        return placement
    return known


def _say_if_configured_differently(placement: Placement) -> None:
    """`AGENT_HOSTS` only sets a new root's first count: say so when this process was given another one."""
    settings = runtime_settings()
    if "hosts" in settings.model_fields_set and settings.hosts != placement.hosts:
        logger.warning(
            "AGENT_HOSTS=%d, but this storage root's agents are spread over %d hosts; to change that on the "
            "running system: agentrt hosts --set %d",
            settings.hosts,
            placement.hosts,
            settings.hosts,
        )
