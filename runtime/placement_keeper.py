"""The placement keeper: what holds a storage root's `Placement` and changes it, one per root.

It lives in the root's runtime actor (the alarm scheduler's, `runtime.scheduler`: one process per root, not
two) and is reached through it. Every process learns the placement from there once
(`runtime.placement_view`), and again whenever a host refuses a call under a newer one, so a changed host
count reaches everyone without a restart. The record is durable in a store the root shares (a small SQLite
file in the runtime folder, or a row in the database on PostgreSQL, so every node of a cluster reads the
same one); the keeper itself holds nothing that a restart loses.

`resize(n)` changes the count on a running system: it publishes a *moving* placement to every host (each
lets the agents it no longer owns hibernate, waiting for their turns in flight to end), then the *settled*
one (see `runtime.placement`). A keeper that dies half-way finishes the move when it comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from runtime.placement import PLACEMENT_FILE, Placement, host_name, runtime_dir
from runtime.storage_choice import shared_storage

logger = logging.getLogger("runtime.placement")

STORE_NAME = "placement"
RECORD_KEY = "placement"
MAX_HOSTS = 1024


_in_this_process: dict[tuple[str, str], PlacementKeeper] = {}


def keeper_in_this_process(storage_dir: Path, namespace: str) -> PlacementKeeper | None:
    """A keeper of the root made in this process (a scheduler's), for when the root's own runtime actor
    cannot be reached: a second scheduler of a database then still knows where agents live."""
    return _in_this_process.get((str(storage_dir), namespace))


class PlacementKeeper:
    """Holds the root's placement (`current`) and moves agents when the host count changes (`resize`);
    `configured_hosts` is the count of a root that has none yet. Made inside a running event loop."""

    def __init__(self, storage_dir: str, namespace: str, configured_hosts: int) -> None:
        self.storage_dir = Path(storage_dir)
        self.namespace = namespace
        self.placement = Placement(0, max(1, configured_hosts))
        self._store = shared_storage(STORE_NAME, runtime_dir(self.storage_dir) / f"{STORE_NAME}.sqlite3")
        self._changing = asyncio.Lock()
        self._ready = asyncio.get_running_loop().create_task(self._load(configured_hosts))
        _in_this_process[(str(self.storage_dir), namespace)] = self

    async def _load(self, configured_hosts: int) -> None:
        await self._store.open()
        record = await self._store.get(RECORD_KEY)
        if record is None:
            self.placement = Placement(1, _first_count(self.storage_dir, configured_hosts))
            await self._store.put(RECORD_KEY, self.placement.record())
        else:
            self.placement = Placement.from_record(record)
        if self.placement.moving_from is not None:  # the keeper died during a move: finish it
            logger.warning("a host-count change to %d was interrupted; finishing it", self.placement.hosts)
            asyncio.get_running_loop().create_task(self.resize(self.placement.hosts))

    async def current(self) -> Placement:
        """The placement now (never waits for a move in progress: hosts and handles ask during one)."""
        await self._ready
        return self.placement

    async def resize(self, hosts: int) -> dict[str, Any]:
        """Spread the root's agents over `hosts` hosts, moving the fewest; returns what it did. Changes are
        made one at a time; asking for the count already in place does nothing."""
        if not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"the number of hosts must be an integer from 1 to {MAX_HOSTS}, not {hosts!r}")
        await self._ready
        async with self._changing:
            started = time.monotonic()
            before = self.placement
            moved_from = before.moving_from if before.moving_from is not None else before.hosts
            if before.moving_from is None and before.hosts == hosts:
                return {"version": before.version, "hosts": hosts, "from": hosts, "released": 0, "seconds": 0.0}
            moving = Placement(before.version + 1, hosts, moved_from)
            released = await self._publish(moving)
            settled = Placement(moving.version + 1, hosts)
            await self._publish(settled, also=moving.slots())
            logger.info("agents spread over %d hosts (were %d): %d live agents moved", hosts, moved_from, released)
            return {
                "version": settled.version,
                "hosts": hosts,
                "from": moved_from,
                "released": released,
                "seconds": round(time.monotonic() - started, 3),
            }

    async def _publish(self, placement: Placement, also: range = range(0)) -> int:
        """Record `placement`, then have every running host of its slots (and of `also`) adopt it; returns
        how many live agents the hosts let go. A host that is gone needs nothing: it reads the placement
        here when it starts."""
        await self._store.put(RECORD_KEY, placement.record())
        self.placement = placement
        slots = sorted(set(placement.slots()) | set(also))
        hosts = await asyncio.to_thread(self._running_hosts, slots)
        outcomes = await asyncio.gather(*(host.adopt.remote(placement) for host in hosts), return_exceptions=True)
        released = 0
        for outcome in outcomes:
            if isinstance(outcome, int):
                released += outcome
            elif not isinstance(outcome, RayActorError):  # a host that died restarts and reads it here
                logger.warning("a host could not adopt placement %d: %s", placement.version, outcome)
        return released

    def _running_hosts(self, slots: list[int]) -> list[Any]:
        found = []
        for slot in slots:
            try:
                found.append(ray.get_actor(host_name(self.storage_dir, slot), namespace=self.namespace))
            except ValueError:
                continue
        return found


def _first_count(storage_dir: Path, configured_hosts: int) -> int:
    """The count of a root's first placement: the one its `placement.json` recorded, or the configured."""
    try:
        hosts = json.loads((runtime_dir(storage_dir) / PLACEMENT_FILE).read_text()).get("hosts")
    except (OSError, ValueError, AttributeError):
        return configured_hosts
    return hosts if isinstance(hosts, int) and hosts >= 1 else configured_hosts
