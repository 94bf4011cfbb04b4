"""`AgentHost`: the Ray actor that many agents live in (one of `AGENT_HOSTS` per storage root).

A process per agent would cost every thread ever used a Ray worker (~140 MiB) and every new one a cold
Python start. A host is one long-lived, restartable, detached actor that activates agents inside itself
on demand and lets idle ones hibernate (`runtime.activations`), so memory follows the live agents and
waking one costs opening its SQLite file, not starting a process.

- Which host an agent lives in is a hash of its name under the root's placement (`runtime.placement`):
  one live instance per id. A host runs only the agents its placement says it serves and refuses the rest
  (`AgentMovedError`, before anything ran; handles retry where the newer placement says). When the host
  count changes, the keeper has each host `adopt` the new placement: it lets the agents it no longer
  serves hibernate, and a host beyond the new count exits once empty.
- Crash: Ray restarts the host (`max_restarts=-1`); it re-activates the agents that were live at the
  crash (a small resident list beside the alarm index), so their `on_start` recovery runs at once, as it
  would for a restarted actor. A call in flight at the crash fails (it may have run) and is not retried.
- A host with no live agent for `AGENT_HOST_IDLE_SECONDS` exits on purpose. Calls that reach it while
  it leaves are refused with `HostRetiringError` before anything runs, and handles retry them on a fresh
  host (see `runtime.handles`), so callers never see it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from runtime import metrics
from runtime.activations import Activations
from runtime.agent import Agent
from runtime.alarm_client import report_next_due
from runtime.classes import import_agent_class, import_modules
from runtime.counters import counters
from runtime.errors import AgentMovedError, HostRetiringError
from runtime.freed_memory import FreedMemory
from runtime.ids import actor_name
from runtime.placement import Placement, host_name, runtime_dir
from runtime.placement_view import fetch_placement, learn, placement_once_reachable
from runtime.settings import runtime_settings
from runtime.storage import AgentStorage
from runtime.storage_root import use_storage_root

logger = logging.getLogger("runtime.host")

RESIDENTS_MIGRATIONS = [
    "CREATE TABLE residents (name TEXT PRIMARY KEY, class_path TEXT NOT NULL, agent_id TEXT NOT NULL)",
]

HANDOVER_SECONDS = 300.0
"""How long a host waits for the agents it no longer serves to finish their turns and leave, before the
move goes on without them (the fencing epoch then keeps their stale writes out)."""

REAPER_TICK_SECONDS = 0.25
"""How often a host looks for idle agents (and whether it is itself idle); a tick is O(live agents)."""

_hosts: dict[tuple[str, str, str, int], Any] = {}


@dataclass(frozen=True)
class AgentCall:
    """One call on an agent, as a handle sends it to the agent's host: one Ray argument, since Ray
    serializes each argument of a call on its own (six of them cost a read ~0.2 ms more)."""

    agent_class: type[Agent]
    agent_id: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    create: bool = True
    placement_version: int = 0
    """The placement the caller chose the host by (a host that knows an older one asks the keeper)."""


@ray.remote
class AgentHost:
    """Hosts the live agents of one slot of a storage root; all calls go through `call`."""

    def __init__(self, storage_dir: str, namespace: str, slot: int) -> None:
        settings = runtime_settings()
        self.storage_dir = Path(storage_dir)
        self.namespace = namespace
        use_storage_root(storage_dir, namespace)  # its agents' own get_agent() calls stay in this root
        self.slot = slot
        self.host_idle_seconds = settings.host_idle_seconds
        self.placement = Placement(0, settings.hosts)  # until `_start` has read the keeper's
        self.activations = Activations(
            self.storage_dir,
            namespace,
            idle_seconds=settings.idle_seconds,
            max_live=settings.max_live,
            activation_timeout=settings.activation_timeout,
            report_due=report_next_due,
            on_activate=self._remember,
            on_leave=self._forget,
            admit=self._check_serves,
        )
        self._residents = AgentStorage(
            runtime_dir(self.storage_dir) / "hosts" / f"{slot}.sqlite3", synchronous="NORMAL"
        )
        self._calls = 0
        self._empty_since: float | None = time.monotonic()
        self._retiring = False
        self._started_at = time.time()
        self._freed_memory = FreedMemory()
        self._ready = asyncio.get_running_loop().create_task(self._start())
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _start(self) -> None:
        self._take(await placement_once_reachable(self.storage_dir, self.namespace, self.slot))
        await self._residents.open()
        await self._residents.migrate("runtime.AgentHost", RESIDENTS_MIGRATIONS)
        rows = await self._residents.fetchall("SELECT name, class_path, agent_id FROM residents")
        for row in rows:  # live when this host last stopped (it crashed): bring them back so they recover
            if not self.placement.serves(row["name"], self.slot):  # moved meanwhile: it wakes where it lives
                await self._residents.execute("DELETE FROM residents WHERE name = ?", (row["name"],))
                continue
            try:
                cls = import_agent_class(row["class_path"])
            except Exception as exc:
                logger.warning("cannot re-activate %s (%s); it wakes on its next call", row["name"], exc)
                await self._residents.execute("DELETE FROM residents WHERE name = ?", (row["name"],))
                continue
            asyncio.get_running_loop().create_task(self._reactivate(cls, row["agent_id"]))

    async def _reactivate(self, cls: type[Agent], agent_id: str) -> None:
        try:
            await self.activations.call(cls, agent_id, "ready", create=False)
        except Exception as exc:
            logger.warning("re-activating %s/%s failed: %s", cls.agent_class_name(), agent_id, exc)

    async def _remember(self, agent: Agent) -> None:
        await self._ready
        await self._residents.execute(
            "INSERT OR REPLACE INTO residents(name, class_path, agent_id) VALUES (?, ?, ?)",
            (agent.name, agent.class_path(), agent.id),
        )

    async def _forget(self, agent: Agent) -> None:
        await self._ready
        await self._residents.execute("DELETE FROM residents WHERE name = ?", (agent.name,))

    # -- the one entry point ---------------------------------------------------------------------------
    async def call(self, call: AgentCall) -> Any:
        """Run `call` on its agent, activating the agent here if it is not live."""
        if self._retiring:
            raise HostRetiringError(f"host {self.slot} is leaving; retry")
        self._calls += 1
        self._empty_since = None
        try:
            await asyncio.shield(self._ready)
            if call.placement_version > self.placement.version:  # the caller knows a newer one than this host
                self._take(await fetch_placement(self.storage_dir, self.namespace))
            self._check_serves(actor_name(call.agent_class.agent_class_name(), call.agent_id))
            return await self.activations.call(
                call.agent_class, call.agent_id, call.method, call.args, call.kwargs, create=call.create
            )
        finally:
            self._calls -= 1

    # -- placement -------------------------------------------------------------------------------------
    def _check_serves(self, name: str) -> None:
        if not self.placement.serves(name, self.slot):
            raise AgentMovedError(name, self.placement)

    def _take(self, placement: Placement) -> None:
        """Run under `placement` from now on (if newer): the live cap is split over its hosts."""
        placement = learn(self.storage_dir, self.namespace, placement)
        if placement.version > self.placement.version:
            self.placement = placement
            self.activations.max_live = max(1, -(-runtime_settings().max_live // placement.hosts))

    async def adopt(self, placement: Placement) -> int:
        """The keeper's new placement: take it, and let every live agent it no longer serves here hibernate
        (returns when they have left, so that the keeper may let their new host activate them)."""
        await asyncio.shield(self._ready)
        self._take(placement)
        return await self.activations.let_go(
            lambda name: not self.placement.serves(name, self.slot), timeout=HANDOVER_SECONDS
        )

    async def preload(self, modules: list[str]) -> None:
        """Import the agents' code now (`runtime.registry.start_runtime`), so that the first activation does
        not pay for it, and a host's memory at rest is what it will be once used."""
        await asyncio.to_thread(import_modules, modules)

    async def stats(self) -> dict[str, Any]:
        """What lives here (for operators, benchmarks and tests)."""
        return {
            "slot": self.slot,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "calls": self._calls,
            "live_names": self.activations.live_names(),
            "leaving_names": self.activations.leaving_names(),
            "started_at": self._started_at,
            "placement": self.placement.record(),
            "counters": counters(),
            "memory_trims": self._freed_memory.trims,
            **self.activations.stats(),
        }

    # -- idle agents and an idle host ------------------------------------------------------------------
    async def _reap(self) -> None:
        await self._ready
        while True:
            await asyncio.sleep(REAPER_TICK_SECONDS)
            try:
                self.activations.hibernate_idle()
                await self._freed_memory.release_if_due(self.activations.counters["hibernations"])
                metrics.LIVE_AGENTS.set(self.activations.live_count, host=str(self.slot))
                if self._should_retire():
                    me = ray.get_runtime_context().current_actor
                    me._retire.remote()
            except Exception:
                logger.exception("host %s: reaper tick failed", self.slot)

    def _should_retire(self) -> bool:
        """Empty for `host_idle_seconds`, or empty at once when the placement has no more use for this slot."""
        removed = self.placement.version > 0 and self.slot not in self.placement.slots()
        if (self.host_idle_seconds <= 0 and not removed) or self._retiring:
            return False
        if self._calls or not self.activations.is_empty():
            self._empty_since = None
            return False
        if self._empty_since is None:
            self._empty_since = time.monotonic()
        return removed or time.monotonic() - self._empty_since >= self.host_idle_seconds

    async def _retire(self) -> None:
        """Exit on purpose (Ray does not restart it): only when still empty, refusing calls from here on."""
        if not self._should_retire():
            return
        self._retiring = True
        logger.info("host %s: no live agents for %.0fs; exiting", self.slot, self.host_idle_seconds)
        await self._residents.close()
        ray.actor.exit_actor()


def _host_key(root: Path, namespace: str, slot: int) -> tuple[str, str, str, int]:
    """A cached handle stays valid across its actor's restarts, not across the cluster's (the session)."""
    return (ray.get_runtime_context().get_session_name(), str(root), namespace, slot)


HIGH_VOLUME_ACTOR = "enable_task_events=False"
"""Hosts and schedulers take every agent call and wake-up: Ray's task events for them (kept by the GCS for
its dashboard and state API, up to 100,000 tasks) grew the GCS by about 450 MiB over 100,000 thread
creations and cost each call their reporting; the runtime keeps its own metrics and failure journal."""


def ensure_host(storage_dir: Path, namespace: str, slot: int) -> Any:
    """The host actor of `slot` in this storage root, created if absent (a blocking GCS call the first time)."""
    root = Path(storage_dir).resolve()
    key = _host_key(root, namespace, slot)
    handle = _hosts.get(key)
    if handle is None:
        handle = AgentHost.options(  # type: ignore[attr-defined]
            name=host_name(root, slot),
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=runtime_settings().host_cpus,
            resources=runtime_settings().host_resources or None,
            scheduling_strategy="SPREAD",  # over the nodes that can take it, not where the caller runs
            max_concurrency=runtime_settings().host_max_concurrency,
            enable_task_events=False,  # see HIGH_VOLUME_ACTOR
        ).remote(str(root), namespace, slot)
        _hosts[key] = handle
    return handle


def forget_host(storage_dir: Path, namespace: str, slot: int, handle: Any) -> None:
    """Drop a cached host handle (its actor left); the next `ensure_host` looks it up or creates it anew."""
    key = _host_key(Path(storage_dir).resolve(), namespace, slot)
    if _hosts.get(key) is handle:
        del _hosts[key]
