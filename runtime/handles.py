"""Handles: call an agent by `(class, id)` wherever it lives, and never see its lifecycle.

`await handle.method(*args)` (or a blocking call on the sync twin) sends the call to the agent's host,
which activates the agent if it is hibernating or new. Errors come back as the agent's own exception types
(not Ray's wrapper), so callers can `except NotOwnerError` and friends.

Where: the agent's host under the root's placement as this process knows it (`runtime.placement_view`).
A host that no longer serves the agent (hosts were added or removed) refuses with `AgentMovedError`,
which carries the newer placement: the call goes again where that one says, at once if the move is over,
after a short pause while it is under way.

Retries, and only the safe ones: a call refused by a host that is leaving (`HostRetiringError`, raised
before anything ran), refused as moved, or that hit a host which has since exited on purpose is sent again.
A host that exited on purpose no longer holds its name (or a new actor holds it); one that crashed keeps
its name and actor id while Ray restarts it, and a call in flight then may have run, so that error is
raised, not retried, unless running the call twice is harmless: a `@read`, or a call the caller marks
`_idempotent=True` (a message sent with its own id, create-or-open). Those are sent again to the restarted
host, within the same retry window.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError

from runtime.agent import Agent
from runtime.backoff import exponential_delay
from runtime.errors import AgentMovedError, HostRetiringError
from runtime.host import AgentCall, ensure_host, forget_host
from runtime.ids import actor_name, validate_agent_id
from runtime.methods import check_method
from runtime.placement import host_name
from runtime.placement_view import current_placement, learn
from runtime.turn_order import TURN_TICKET_KWARG

A = TypeVar("A", bound=Agent)

RETRY_WINDOW_SECONDS = 30.0
"""How long a handle keeps retrying a call on a fresh host before giving up with the last error."""
RETRY_FIRST_PAUSE_SECONDS, RETRY_MAX_PAUSE_SECONDS = 0.01, 0.5


def unwrap_error(error: RayTaskError) -> BaseException:
    """The agent's own exception behind Ray's wrapper (so `except NotOwnerError` works)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


class _HandleBase(Generic[A]):
    """What both proxies share: where the agent lives, and the turn tickets that keep this handle's calls
    in order."""

    def __init__(self, cls: type[A], agent_id: str, *, storage_dir: Path, namespace: str, create: bool = True) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise TypeError(f"an agent handle needs an Agent subclass, got {cls!r}")
        self.agent_class = cls
        self.id = validate_agent_id(agent_id)
        self.name = actor_name(cls.agent_class_name(), agent_id)
        self.storage_dir = Path(storage_dir)
        self.namespace = namespace
        self.create = create
        self._new_submitter()
        self._target()  # finds or starts the host now: the first call pays no GCS lookup

    def _target(self) -> tuple[int, Any]:
        """The agent's host slot and actor under the placement this process knows, worked out again only
        when that placement changed or the host failed (a blocking GCS call the first time per slot)."""
        placement = current_placement(self.storage_dir, self.namespace)
        if placement is not self._placement or self._host is None:
            self._slot = placement.owner(self.name)
            self._host = ensure_host(self.storage_dir, self.namespace, self._slot)
            self._placement = placement
        return self._slot, self._host

    @property
    def slot(self) -> int:
        return self._target()[0]

    @property
    def host(self) -> Any:
        return self._target()[1]

    def _new_submitter(self) -> None:
        self._submitter = uuid.uuid4().hex
        self._seq = itertools.count()
        self._placement: Any = None
        self._slot, self._host = 0, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for per_process in ("_submitter", "_seq", "_placement", "_slot", "_host"):
            del state[per_process]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_submitter()  # a copy in another process is another submitter

    def _stamp(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if getattr(getattr(self.agent_class, method, None), "__agent_turn__", False):
            return {**kwargs, TURN_TICKET_KWARG: (self._submitter, next(self._seq))}
        return kwargs

    def _send(self, host: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        version = self._placement.version if self._placement is not None else 0
        call = AgentCall(self.agent_class, self.id, method, args, kwargs, self.create, version)
        return host.call.remote(call)

    def _check_method(self, method: str) -> None:
        if method.startswith("__"):
            raise AttributeError(method)  # keeps pickle, copy and friends away from the proxy
        check_method(self.agent_class, method)

    def _harmless_twice(self, method: str, idempotent: bool) -> bool:
        return idempotent or getattr(getattr(self.agent_class, method, None), "__agent_read__", False)

    def _safe_to_retry(self, error: Exception, host: Any, host_slot: int, harmless_twice: bool = False) -> bool:
        """Whether sending the call again is safe: `error` proves it never ran, or running it twice is
        harmless and its host died (see the module docstring). Blocking (a GCS lookup)."""
        if isinstance(error, RayTaskError):
            return isinstance(unwrap_error(error), (HostRetiringError, AgentMovedError))
        if not isinstance(error, RayActorError):
            return False
        if harmless_twice:
            return True
        try:
            current = ray.get_actor(host_name(self.storage_dir, host_slot), namespace=self.namespace)
        except ValueError:
            return True  # the name is free: the host exited on purpose
        return current._actor_id != host._actor_id

    def _pause_before_retry(
        self, error: Exception, host: Any, host_slot: int, deadline: float, failures: int, harmless_twice: bool
    ) -> float:
        """After the `failures`-th failed try: the pause before sending it again (10 ms, doubling up to
        0.5 s; none when the refusal taught this process a newer placement), or raise, as the agent's own
        exception, when retrying is not safe or took too long. Blocking (a GCS lookup)."""
        if time.monotonic() > deadline or not self._safe_to_retry(error, host, host_slot, harmless_twice):
            if isinstance(error, RayTaskError):
                raise unwrap_error(error) from None
            raise error
        moved = unwrap_error(error) if isinstance(error, RayTaskError) else None
        if isinstance(moved, AgentMovedError):
            used = current_placement(self.storage_dir, self.namespace)
            if learn(self.storage_dir, self.namespace, moved.placement).version > used.version:
                return 0.0  # the call was sent by an old placement: send it where the new one says
        else:
            forget_host(self.storage_dir, self.namespace, host_slot, host)
            self._host = None  # the next try finds a fresh one
        return exponential_delay(failures, RETRY_FIRST_PAUSE_SECONDS, RETRY_MAX_PAUSE_SECONDS)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class AgentHandle(_HandleBase[A]):
    """Async proxy: `await handle.method(*args)` calls the agent's method in its host."""

    def __getattr__(self, method: str) -> Any:
        self._check_method(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.invoke(method, *args, **kwargs)

        call.__name__ = method
        return call

    async def invoke(
        self, method: str, *args: Any, _cancel_remote: bool = False, _idempotent: bool = False, **kwargs: Any
    ) -> Any:
        """Call `method`. With `_cancel_remote`, cancelling the awaiting task cancels the call in the agent
        too (for long-polls); by default a started call runs to its end even if its caller goes away.
        `_idempotent`: running it twice is harmless, so it is sent again if its host crashes mid-call."""
        self._check_method(method)
        harmless_twice = self._harmless_twice(method, _idempotent)
        kwargs = self._stamp(method, kwargs)
        deadline = time.monotonic() + RETRY_WINDOW_SECONDS
        for failures in itertools.count(1):
            slot, host = self._target() if failures == 1 else await asyncio.to_thread(self._target)
            ref = self._send(host, method, args, kwargs)
            try:
                return await ref
            except asyncio.CancelledError:
                if _cancel_remote:
                    ray.cancel(ref)
                raise
            except (RayTaskError, RayActorError) as error:
                pause = await asyncio.to_thread(
                    self._pause_before_retry, error, host, slot, deadline, failures, harmless_twice
                )
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")


class SyncAgentHandle(_HandleBase[A]):
    """Blocking proxy for scripts: `handle.method(*args)` waits for the result."""

    def __init__(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout

    def __getattr__(self, method: str) -> Any:
        self._check_method(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.invoke(method, *args, **kwargs)

        call.__name__ = method
        return call

    def invoke(self, method: str, *args: Any, _idempotent: bool = False, **kwargs: Any) -> Any:
        self._check_method(method)
        harmless_twice = self._harmless_twice(method, _idempotent)
        kwargs = self._stamp(method, kwargs)
        deadline = time.monotonic() + RETRY_WINDOW_SECONDS
        for failures in itertools.count(1):
            slot, host = self._target()
            try:
                return ray.get(self._send(host, method, args, kwargs), timeout=self.timeout)
            except (RayTaskError, RayActorError) as error:
                pause = self._pause_before_retry(error, host, slot, deadline, failures, harmless_twice)
            time.sleep(pause)
        raise AssertionError("unreachable")
