"""Addressing agents: one live actor per `(class, id)`, cluster-wide.

`get_agent(Chat, "t1")` returns a handle to the named, detached, restartable actor `"Chat/t1"`, creating
it on first use. Every driver or actor in the same namespace that asks for the same id reaches the same
instance. Handles proxy method calls: `await handle.method(...)` (or a blocking call on the sync twin),
and re-raise the agent's own exception types instead of Ray's wrapper, so callers can `except`
`NotOwnerError` and friends.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Generic, TypeVar

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayTaskError

from runtime.agent import Agent
from runtime.ids import actor_name, validate_agent_id
from runtime.settings import runtime_settings

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


class AgentHandle(Generic[A]):
    """Async proxy: `await handle.method(*args)` calls the agent's method on its actor."""

    def __init__(self, actor: ActorHandle, cls: type[A], agent_id: str) -> None:
        self.actor = actor
        self.agent_class = cls
        self.id = agent_id

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)
        remote_method = getattr(self.actor, method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await remote_method.remote(*args, **kwargs)
            except RayTaskError as error:
                raise unwrap_error(error) from None

        call.__name__ = method
        return call

    def __repr__(self) -> str:
        return f"<AgentHandle {self.agent_class.agent_class_name()}/{self.id}>"


class SyncAgentHandle(Generic[A]):
    """Blocking proxy for scripts: `handle.method(*args)` waits for the result."""

    def __init__(self, actor: ActorHandle, cls: type[A], agent_id: str, timeout: float | None = None) -> None:
        self.actor = actor
        self.agent_class = cls
        self.id = agent_id
        self.timeout = timeout

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)
        remote_method = getattr(self.actor, method)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return ray.get(remote_method.remote(*args, **kwargs), timeout=self.timeout)
            except RayTaskError as error:
                raise unwrap_error(error) from None

        call.__name__ = method
        return call

    def __repr__(self) -> str:
        return f"<SyncAgentHandle {self.agent_class.agent_class_name()}/{self.id}>"


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
