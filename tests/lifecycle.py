"""Looking inside the runtime's hosts from tests: which agents are live, and waiting for one to leave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from runtime.placement import host_name
from runtime.placement_view import current_placement
from tests.waiting import eventually


def host_handles(storage_dir: Path, namespace: str) -> list[Any]:
    """The running host actors of a storage root (a host that exited is simply absent)."""
    handles = []
    root = Path(storage_dir).resolve()
    try:
        slots = current_placement(root, namespace).slots()
    except RuntimeError:  # no runtime of this root in this namespace: no host either
        return []
    for slot in slots:
        try:
            handles.append(ray.get_actor(host_name(root, slot), namespace=namespace))
        except ValueError:
            continue
    return handles


async def host_stats(storage_dir: Path, namespace: str) -> list[dict[str, Any]]:
    return [await handle.stats.remote() for handle in host_handles(storage_dir, namespace)]


async def live_agent_names(storage_dir: Path, namespace: str) -> set[str]:
    """Names ("Class/id") of the agents live in any host of the root right now."""
    return {name for stats in await host_stats(storage_dir, namespace) for name in stats["live_names"]}


async def wait_until_hibernated(storage_dir: Path, namespace: str, name: str, timeout: float = 60.0) -> None:
    """Until `name` has left its host: neither live nor still leaving (a leave that cannot tell the scheduler
    its next alarm makes the agent live again, so "not live" alone is not asleep yet)."""

    async def gone() -> bool:
        return not any(
            name in stats["live_names"] or name in stats.get("leaving_names", ())
            for stats in await host_stats(storage_dir, namespace)
        )

    await eventually(gone, timeout=timeout, interval=0.1, what=f"{name} to hibernate")
