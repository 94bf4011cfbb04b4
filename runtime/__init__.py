"""ray-agent-runtime's core: durable agents as Ray actors (the Durable Object analogue).

Knows nothing of chat or auth. Public surface:

- `Agent`, `public`, `turn`, `read`, `internal`: the base class and its method markers (`public`: callable
  through a handle, and only what is marked so is; `internal`: never, even if a base class made it public);
- `get_agent` / `get_agent_sync`: address an agent by `(class, id)`;
- `init`: connect to (or start) Ray and the alarm scheduler for a storage root;
- `set_host_count`: spread a root's agents over more or fewer host processes, on the running system;
- `Schedule`, `InvalidScheduleError`, `InvalidAgentIdError`: what schedules and ids give back;
- `AgentNotFoundError`, `AgentCapacityError`: an agent that was never created (with `create=False`), and a
  host whose live agents are all busy (retry later); `AgentIdConflictError`: an id whose file belongs to
  another id (ids that differ only in case, on a case-insensitive filesystem); `StaleActivationError`: a
  write from an activation a newer one has fenced off (refused, nothing written); `StorageUnavailableError`:
  the agents' database (`AGENT_STORAGE_URL`) cannot be reached now (nothing written, retry);
  `AgentMovedError`: the agent's hosts are changing and the move took longer than a handle waits (30 s;
  nothing ran, retry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.agent import Agent, internal, read, turn
from runtime.errors import (
    AgentCapacityError,
    AgentIdConflictError,
    AgentMovedError,
    AgentNotFoundError,
    StaleActivationError,
    StorageUnavailableError,
)
from runtime.handles import AgentHandle, SyncAgentHandle
from runtime.ids import InvalidAgentIdError, validate_agent_id
from runtime.methods import public
from runtime.registry import get_agent, get_agent_sync, set_host_count
from runtime.schedules import InvalidScheduleError, Schedule
from runtime.settings import RuntimeSettings, runtime_settings
from runtime.storage import AgentStorage, StorageError

__all__ = [
    "Agent",
    "AgentCapacityError",
    "AgentHandle",
    "AgentIdConflictError",
    "AgentMovedError",
    "AgentNotFoundError",
    "AgentStorage",
    "InvalidAgentIdError",
    "InvalidScheduleError",
    "RuntimeSettings",
    "Schedule",
    "StaleActivationError",
    "StorageError",
    "StorageUnavailableError",
    "SyncAgentHandle",
    "get_agent",
    "get_agent_sync",
    "internal",
    "init",
    "public",
    "read",
    "runtime_settings",
    "set_host_count",
    "turn",
    "validate_agent_id",
]


def init(
    *,
    storage_dir: str | Path | None = None,
    namespace: str | None = None,
    start_hosts: bool = False,
    **ray_init_kwargs: Any,
) -> Any:
    """Connect to Ray (starting a local cluster if none is running) and start the alarm scheduler.

    Call it once per driver. After a full cluster restart this is what brings due schedules back: the
    scheduler reloads its index from `storage_dir` and wakes the agents that are due. `storage_dir`
    (default: `AGENT_STORAGE_DIR`, else `./.data`) and `namespace` become this process's: every handle
    `get_agent` gives without its own `storage_dir=` keeps its agents' files and alarms there. With
    `AGENT_STORAGE_URL` set, its database must answer (`runtime.storage_choice.StorageConfigError`
    otherwise). With `start_hosts`, the root's agent hosts are started too (and waited for), so that the
    first call pays no process start. Returns the scheduler's actor handle.
    """
    import ray

    from runtime.registry import start_runtime
    from runtime.storage_choice import check_storage
    from runtime.storage_root import use_storage_root

    check_storage()  # a malformed or unreachable AGENT_STORAGE_URL: refused here, naming it
    root, ns = use_storage_root(storage_dir, namespace)
    if not ray.is_initialized():
        ray_init_kwargs.setdefault("namespace", ns)
        ray.init(**ray_init_kwargs)
    scheduler, hosts = start_runtime(root, ns)
    ray.get(scheduler.pending.remote())  # wait until it has loaded its index
    if start_hosts:
        ray.get([host.stats.remote() for host in hosts])
    return scheduler
