"""The runtime's lifecycle errors: what a caller may see when an agent cannot be reached as asked.

They cross Ray unchanged (handles re-raise the agent side's exception), so callers `except` them by type.
"""

from __future__ import annotations

from runtime.placement import Placement


class AgentNotFoundError(LookupError):
    """The agent has never been created, and the call asked not to create it (`get_agent(..., create=False)`)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no agent {name}")
        self.name = name

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name,))


class AgentCapacityError(RuntimeError):
    """Every live agent of the host is busy and the live cap is reached: retry after `retry_after` seconds.

    Raised before anything of the call ran, so retrying is always safe.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.retry_after))


class HostRetiringError(RuntimeError):
    """The host is leaving (it has been empty for a while); nothing of the call ran. Handles retry it on a
    fresh host, so callers never see this."""


class AgentMovedError(RuntimeError):
    """The host does not serve this agent under `placement` (hosts were added or removed; during the move
    no host does). Nothing of the call ran: handles learn `placement` and send the call again where it says,
    so callers never see this."""

    def __init__(self, name: str, placement: Placement) -> None:
        super().__init__(f"{name} is not served here under placement version {placement.version}; retry")
        self.name = name
        self.placement = placement

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.placement))


class AgentIdConflictError(RuntimeError):
    """The agent's file already belongs to another id: on a case-insensitive filesystem (macOS, Azure Files)
    `alice-t` and `ALICE-T` are one file. The first id to use it keeps it; the other is refused before it
    reads or schedules anything."""

    def __init__(self, agent_id: str, recorded: str) -> None:
        super().__init__(f"agent id {agent_id!r} names the file of {recorded!r} (ids differing only in case?)")
        self.agent_id = agent_id
        self.recorded = recorded

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.agent_id, self.recorded))


class StaleActivationError(RuntimeError):
    """A newer activation of this agent has taken its file (a higher fencing epoch): this one may no longer
    write. The write was refused before it changed anything; the stale instance leaves its host."""

    def __init__(self, path: str, epoch: int, current: int) -> None:
        super().__init__(f"{path}: activation epoch {epoch} was superseded by epoch {current}; nothing was written")
        self.path = path
        self.epoch = epoch
        self.current = current

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.epoch, self.current))


class StorageUnavailableError(RuntimeError):
    """The agents' database (`AGENT_STORAGE_URL`) cannot be reached right now: the call's transaction did
    not commit, so nothing of it was written. Retry after `retry_after` seconds; once the database is back,
    agents use it again by themselves (the HTTP API answers 503 `storage_unavailable` with `Retry-After`)."""

    def __init__(self, message: str, retry_after: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.retry_after))
