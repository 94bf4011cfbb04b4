"""Addressing agents: one live actor per `(class, id)`, cluster-wide.

`get_agent(Chat, "t1")` returns a handle to the named, detached, restartable actor `"Chat/t1"`, creating
it on first use. Every driver or actor in the same namespace that asks for the same id reaches the same
instance. Handles proxy method calls: `await handle.method(...)` (or a blocking call on the sync twin),
and re-raise the agent's own exception types instead of Ray's wrapper, so callers can `except`
`NotOwnerError` and friends.
"""

from __future__ import annotations

import importlib
import itertools
import uuid
from pathlib import Path
from typing import Any, Generic, TypeVar

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayTaskError

from runtime.agent import Agent
from runtime.ids import actor_name, validate_agent_id
from runtime.settings import runtime_settings
from runtime.turn_order import TURN_TICKET_KWARG

A = TypeVar("A", bound=Agent)

_remote_classes: dict[type, Any] = {}


def resolve_storage_dir(storage_dir: str | Path | None) -> Path:
    return Path(storage_dir or runtime_settings().storage_dir).resolve()


def resolve_namespace(namespace: str | None) -> str:
    return namespace or runtime_settings().namespace


def _remote_class(cls: type[Agent]) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise TypeError(f"get_agent() needs an Agent subclass, got {cls!r}")
    if cls not in _remote_classes:
        _remote_classes[cls] = ray.remote(cls)
    return _remote_classes[cls]


def import_agent_class(class_path: str) -> type[Agent]:
    """Import `module:QualName` (as recorded by `Agent.class_path()`)."""
    module_name, _, qualname = class_path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise TypeError(f"{class_path} is not an Agent subclass")
    return target


def agent_actor(
    cls: type[Agent],
    agent_id: str,
    *,
    storage_dir: str | Path | None = None,
    namespace: str | None = None,
) -> ActorHandle:
    """The raw Ray actor handle of an agent, created if absent (id validated before anything is made)."""
    validate_agent_id(agent_id)
    remote_cls = _remote_class(cls)
    root = resolve_storage_dir(storage_dir)
    ns = resolve_namespace(namespace)
    _ensure_scheduler_for(root, ns)
    return remote_cls.options(
        name=actor_name(cls.agent_class_name(), agent_id),
        namespace=ns,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
        max_concurrency=runtime_settings().max_concurrency,
    ).remote(agent_id, str(root), ns)


def _ensure_scheduler_for(root: Path, namespace: str) -> None:
    from runtime.scheduler import ensure_scheduler

    ensure_scheduler(root, namespace)


def unwrap_error(error: RayTaskError) -> BaseException:
    """The agent's own exception behind Ray's wrapper (so `except NotOwnerError` works)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


class _HandleBase(Generic[A]):
    """What both proxies share: the actor, and the turn tickets that keep this handle's calls in order."""

    def __init__(self, actor: ActorHandle, cls: type[A], agent_id: str) -> None:
        self.actor = actor
        self.agent_class = cls
        self.id = agent_id
        self._new_submitter()

    def _new_submitter(self) -> None:
        self._submitter = uuid.uuid4().hex
        self._seq = itertools.count()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_submitter"], state["_seq"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_submitter()  # a copy in another process is another submitter

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if getattr(getattr(self.agent_class, method, None), "__agent_turn__", False):
            kwargs = {**kwargs, TURN_TICKET_KWARG: (self._submitter, next(self._seq))}
        return getattr(self.actor, method).remote(*args, **kwargs)

    def _check_method(self, method: str) -> None:
        if method.startswith("__"):
            raise AttributeError(method)
        if not callable(getattr(self.agent_class, method, None)):
            raise AttributeError(f"{self.agent_class.__name__} has no method {method!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent_class.agent_class_name()}/{self.id}>"


class AgentHandle(_HandleBase[A]):
    """Async proxy: `await handle.method(*args)` calls the agent's method on its actor."""

    def __getattr__(self, method: str) -> Any:
        self._check_method(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            ref = self._submit(method, args, kwargs)
            try:
                return await ref
            except RayTaskError as error:
                raise unwrap_error(error) from None

        call.__name__ = method
        return call


class SyncAgentHandle(_HandleBase[A]):
    """Blocking proxy for scripts: `handle.method(*args)` waits for the result."""

    def __init__(self, actor: ActorHandle, cls: type[A], agent_id: str, timeout: float | None = None) -> None:
        super().__init__(actor, cls, agent_id)
        self.timeout = timeout

    def __getattr__(self, method: str) -> Any:
        self._check_method(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return ray.get(self._submit(method, args, kwargs), timeout=self.timeout)
            except RayTaskError as error:
                raise unwrap_error(error) from None

        call.__name__ = method
        return call


def get_agent(
    cls: type[A], agent_id: str, *, storage_dir: str | Path | None = None, namespace: str | None = None
) -> AgentHandle[A]:
    """A handle to the one live `cls` agent with this id, created on first use."""
    return AgentHandle(agent_actor(cls, agent_id, storage_dir=storage_dir, namespace=namespace), cls, agent_id)


def get_agent_sync(
    cls: type[A],
    agent_id: str,
    *,
    storage_dir: str | Path | None = None,
    namespace: str | None = None,
    timeout: float | None = None,
) -> SyncAgentHandle[A]:
    """The blocking twin of `get_agent`, for scripts."""
    actor = agent_actor(cls, agent_id, storage_dir=storage_dir, namespace=namespace)
    return SyncAgentHandle(actor, cls, agent_id, timeout)
