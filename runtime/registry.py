"""Addressing agents: one live instance per `(class, id)`, cluster-wide.

`get_agent(Chat, "t1")` returns a handle to the agent `"Chat/t1"`: every driver or actor in the same
namespace that asks for the same id reaches the same instance, in the host its name hashes to. The agent is
created on its first call (`create=False` refuses to create one: `AgentNotFoundError`), hibernates when idle
and comes back transparently on the next call or due alarm.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime.agent import Agent
from runtime.classes import is_script_class, script_agent_classes
from runtime.handles import AgentHandle, SyncAgentHandle
from runtime.host import ensure_host
from runtime.placement_view import current_placement, learn
from runtime.scheduler import ensure_scheduler, forget_scheduler_if_gone
from runtime.storage_root import resolve_namespace, resolve_storage_dir

A = TypeVar("A", bound=Agent)
logger = logging.getLogger("runtime.registry")


def get_agent(
    cls: type[A],
    agent_id: str,
    *,
    storage_dir: str | Path | None = None,
    namespace: str | None = None,
    create: bool = True,
) -> AgentHandle[A]:
    """A handle to the one `cls` agent with this id (created on its first call unless `create=False`), in
    the storage root `runtime.init` was given unless `storage_dir` names another.

    Blocks briefly the first time a process reaches a storage root (it looks up or starts the root's
    scheduler and host actors); from then on it is a cheap local object.
    """
    root, ns = resolve_storage_dir(storage_dir), resolve_namespace(namespace)
    register_script_classes(ensure_scheduler(root, ns), [cls])  # before any host: hosts report to it by name
    return AgentHandle(cls, agent_id, storage_dir=root, namespace=ns, create=create)


def get_agent_sync(
    cls: type[A],
    agent_id: str,
    *,
    storage_dir: str | Path | None = None,
    namespace: str | None = None,
    create: bool = True,
    timeout: float | None = None,
) -> SyncAgentHandle[A]:
    """The blocking twin of `get_agent`, for scripts."""
    root, ns = resolve_storage_dir(storage_dir), resolve_namespace(namespace)
    register_script_classes(ensure_scheduler(root, ns), [cls])
    return SyncAgentHandle(cls, agent_id, storage_dir=root, namespace=ns, create=create, timeout=timeout)


def register_script_classes(scheduler: Any, classes: list[type[Agent]]) -> None:
    """Send the scheduler every class in `classes` that no other process can import by path (defined in a
    script), so that its agents' alarms fire while they sleep. Every time, not once per process: a
    scheduler that restarted has forgotten the classes it was given (a script's handles are few)."""
    for cls in classes:
        if not is_script_class(cls):
            continue
        try:
            scheduler.register_class.remote(cls)  # fire and forget
        except Exception as exc:  # a class that cannot be pickled: its alarms park (with the reason) instead
            logger.warning("cannot hand %s to the alarm scheduler: %s", cls.__qualname__, exc)


def start_runtime(
    storage_dir: str | Path | None = None,
    namespace: str | None = None,
    *,
    watch_scheduler: bool = False,
    preload: Sequence[str] = (),
) -> tuple[Any, list[Any]]:
    """Start (or find) a storage root's alarm scheduler and every one of its hosts, so that the first call
    after a deploy pays no process start; they import the modules of `preload` (the agents' code) in the
    background. With `watch_scheduler` (the ingress replicas), this process also keeps the scheduler
    alive from then on (`SchedulerWatch`). Returns their actor handles; blocks on the GCS briefly."""
    root, ns = resolve_storage_dir(storage_dir), resolve_namespace(namespace)
    scheduler = scheduler_with_script_classes(root, ns)
    hosts = [ensure_host(root, ns, slot) for slot in range(current_placement(root, ns).hosts)]
    for actor in (scheduler, *hosts) if preload else ():
        try:
            actor.preload.remote(list(preload))
        except AttributeError:  # an actor of an older version, still running: it loads the code on first use
            logger.info("%s cannot preload; it loads the agent code on first use", actor)
    if watch_scheduler and (root, ns) not in _watches:
        _watches[(root, ns)] = SchedulerWatch(root, ns)
    return scheduler, hosts


def scheduler_with_script_classes(root: Path, namespace: str) -> Any:
    """The root's scheduler (started if absent), given every script-defined class of this process."""
    scheduler = ensure_scheduler(root, namespace)
    register_script_classes(scheduler, script_agent_classes())
    return scheduler


SUPERVISE_SECONDS = 5.0
"""How often a process that watches a root's scheduler checks that it still exists."""


class SchedulerWatch:
    """Watches a root's scheduler (which also keeps its placement) from a daemon thread, and starts a new
    one if it is gone for good: without it no sleeping agent's alarm fires, no host can start and no agent
    can record its next alarm, so none could go to sleep. Every ingress replica watches; the scheduler's
    name keeps it to one. Not for a driver that may call `ray.shutdown()` with the watch running (a Ray
    call in flight on another thread then takes the process down): `stop()` it first."""

    def __init__(self, root: Path, namespace: str) -> None:
        self.root, self.namespace = root, namespace
        self.revived = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"scheduler-watch:{root.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=4 * SUPERVISE_SECONDS + 5)

    def _watch(self) -> None:
        while not self._stop.wait(SUPERVISE_SECONDS):
            try:
                if forget_scheduler_if_gone(self.root, self.namespace, timeout=4 * SUPERVISE_SECONDS):
                    scheduler_with_script_classes(self.root, self.namespace)
                    self.revived += 1
                    logger.warning("the alarm scheduler of %s was gone for good: started anew", self.root)
            except Exception as exc:  # the GCS briefly away: look again next time
                logger.warning("could not check the alarm scheduler of %s: %s", self.root, exc)


_watches: dict[tuple[Path, str], SchedulerWatch] = {}


def set_host_count(
    hosts: int, *, storage_dir: str | Path | None = None, namespace: str | None = None
) -> dict[str, Any]:
    """Spread a root's agents over `hosts` host processes, on the running system: about 1/(N+1) of the
    agents move when one host is added; a moved agent hibernates on its old host (its turn in flight ends
    first) and wakes on its new one at its next call or alarm, and calls meanwhile wait and go on by
    themselves. Blocks until the move is over; returns `{"version", "hosts", "from", "released",
    "seconds"}` (`released`: the live agents that moved). The new hosts are started before it returns."""
    import ray

    root, ns = resolve_storage_dir(storage_dir), resolve_namespace(namespace)
    keeper = ensure_scheduler(root, ns)  # the root's runtime actor keeps its placement
    report = ray.get(keeper.resize_hosts.remote(hosts))
    placement = learn(root, ns, ray.get(keeper.placement.remote()))
    ray.get([ensure_host(root, ns, slot).stats.remote() for slot in range(placement.hosts)])
    return report


def host_report(*, storage_dir: str | Path | None = None, namespace: str | None = None) -> dict[str, Any]:
    """The root's placement as its keeper has it, and each running host's slot, node and live agents."""
    import ray

    from runtime.placement import host_name

    root, ns = resolve_storage_dir(storage_dir), resolve_namespace(namespace)
    placement = learn(root, ns, ray.get(ensure_scheduler(root, ns).placement.remote()))
    running = []
    for slot in placement.slots():
        try:
            running.append(ray.get_actor(host_name(root, slot), namespace=ns))
        except ValueError:
            continue
    hosts = [{k: s[k] for k in ("slot", "node_id", "live")} for s in ray.get([h.stats.remote() for h in running])]
    return {"placement": placement.record(), "hosts": hosts}
