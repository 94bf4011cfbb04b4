"""What this process knows of each storage root's placement: read from the root's keeper once (it lives in
the root's scheduler actor, found by its name), replaced whenever a newer one is seen (a host's
`AgentMovedError` carries it, a host is told by the keeper).

A process with an old view is never wrong for long, and never unsafe: hosts decide who runs an agent under
their own (newer) view and refuse the rest before anything runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ray

from runtime.backoff import exponential_delay
from runtime.placement import Placement, scheduler_name
from runtime.placement_keeper import keeper_in_this_process
from runtime.settings import runtime_settings

logger = logging.getLogger("runtime.placement")

KEEPER_WAIT_SECONDS = 60.0

KEEPER_RETRY_FIRST_SECONDS, KEEPER_RETRY_MAX_SECONDS = 0.2, 5.0
"""A starting host asks the placement keeper again after 0.2 s, 0.4 s, ... at most 5 s, until it answers."""

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
        local = keeper_in_this_process(storage_dir, namespace)
        if local is not None and local.placement.version > 0:
            return learn(storage_dir, namespace, local.placement)
        placement = learn(storage_dir, namespace, ray.get(_keeper(storage_dir, namespace).placement.remote()))
        _say_if_configured_differently(placement)
    return placement


async def fetch_placement(storage_dir: Path, namespace: str) -> Placement:
    """The keeper's placement now (learnt here too): for hosts, which must not wait on a stale view."""
    keeper = await asyncio.to_thread(_keeper, storage_dir, namespace, KEEPER_WAIT_SECONDS)
    return learn(storage_dir, namespace, await keeper.placement.remote())


async def placement_once_reachable(
    storage_dir: Path,
    namespace: str,
    slot: int,
    fetch: Callable[[Path, str], Awaitable[Placement]] = fetch_placement,
    first: float = KEEPER_RETRY_FIRST_SECONDS,
) -> Placement:
    """For a starting host: the keeper's placement, asked again with backoff until it answers. The keeper
    may be restarting itself (a node lost with it and the host on it): a host whose start gave up here would
    refuse every call for good (found by the node-loss test: callers saw the keeper's "restarting" forever).
    `fetch` and `first` are for the test that stands in for a restarting keeper."""
    failures = 0
    while True:
        try:
            return await fetch(storage_dir, namespace)
        except Exception as exc:
            failures += 1
            delay = exponential_delay(failures, first, KEEPER_RETRY_MAX_SECONDS)
            logger.warning("host %d: the placement keeper is unreachable (%s); retrying in %.1fs", slot, exc, delay)
            await asyncio.sleep(delay)


def _keeper(storage_dir: Path, namespace: str, wait: float = 0.0) -> Any:
    """The root's runtime actor, which keeps its placement: whoever makes handles starts it first, but a
    host started on its own (by a deployer) may come up before it, so hosts wait for it `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return ray.get_actor(scheduler_name(storage_dir), namespace=namespace)
        except ValueError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the runtime of {storage_dir} is not started in namespace {namespace!r} (runtime.init does)"
                ) from None
            time.sleep(0.1)


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
