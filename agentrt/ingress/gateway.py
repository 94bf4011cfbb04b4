"""`AgentGateway`: handles to the thread and directory agents, with the runtime's and Ray's errors mapped to
HTTP answers. One per replica process (`gateway`): handles are cached, so a hot thread costs no lookup."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from functools import lru_cache
from typing import Any

from ray.exceptions import RayError

from agentrt.ingress.errors import HttpProblem, agent_unavailable
from agentrt.ingress.settings import ingress_settings
from agents.directory import ThreadDirectory, directory_id_for
from agents.errors import ChatError
from agents.thread_agent import ThreadAgent
from auth.errors import AuthConfigError
from runtime import (
    AgentCapacityError,
    AgentHandle,
    AgentIdConflictError,
    AgentMovedError,
    AgentNotFoundError,
    InvalidAgentIdError,
    StaleActivationError,
    StorageUnavailableError,
    validate_agent_id,
)
from runtime.classes import import_agent_class

logger = logging.getLogger("agentrt.ingress")


@lru_cache(maxsize=1)
def thread_agent_class() -> type[ThreadAgent]:
    """The served thread agent (`AGENTRT_AGENT_CLASS`, `agents.chat:Chat` by default)."""
    return load_thread_agent_class(ingress_settings().agent_class)


def load_thread_agent_class(class_path: str) -> type[ThreadAgent]:
    """Import `module:Class`; a `TypeError` naming it unless it is a `ThreadAgent` subclass."""
    if ":" not in class_path:
        raise TypeError(f"the agent class must be given as module:Class, not {class_path!r}")
    try:
        cls = import_agent_class(class_path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TypeError(f"cannot import the agent class {class_path!r}: {exc}") from None
    if not issubclass(cls, ThreadAgent):
        raise TypeError(f"{class_path} is not a ThreadAgent subclass (see agents/thread_agent.py)")
    return cls


class AgentGateway:
    """Handles to the thread and directory agents, with the runtime's and Ray's errors mapped to HTTP."""

    def __init__(self, max_cached: int = 10_000) -> None:
        self.max_cached = max_cached
        self._handles: OrderedDict[tuple[str, str, bool], AgentHandle[Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _handle(self, kind: str, agent_id: str, create: bool) -> AgentHandle[Any]:
        from runtime import get_agent

        key = (kind, agent_id, create)
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            return handle
        cls = thread_agent_class() if kind == "thread" else ThreadDirectory
        validate_agent_id(agent_id)
        try:  # the first handle of a storage root looks up (or starts) its actors: keep the event loop free
            handle = await asyncio.to_thread(get_agent, cls, agent_id, create=create)
        except RayError:
            raise agent_unavailable() from None
        self._handles[key] = handle
        while len(self._handles) > self.max_cached:
            self._handles.popitem(last=False)
        return handle

    async def thread(self, thread_id: str, *, create: bool = False) -> AgentHandle[Any]:
        """The thread's agent. Only creating or posting to a thread may create one (`create=True`): every
        other route on an unknown id is a 404 that starts nothing."""
        return await self._handle("thread", thread_id, create)

    async def directory(self, subject: str) -> AgentHandle[Any]:
        return await self._handle("directory", directory_id_for(subject), True)

    async def call(
        self,
        handle: AgentHandle[Any],
        method: str,
        *args: Any,
        cancel_remote: bool = False,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """`handle.method(*args)`; with `cancel_remote`, cancelling the caller cancels the call in the agent;
        `idempotent` (running it twice is harmless): sent again if the agent's host crashes mid-call, so a
        crash is a slower answer, not a 503 (reads are always)."""
        try:
            return await handle.invoke(method, *args, _cancel_remote=cancel_remote, _idempotent=idempotent, **kwargs)
        except (ChatError, InvalidAgentIdError, AuthConfigError):
            raise
        except AgentNotFoundError:
            raise HttpProblem(404, "thread_not_found", "no thread with this id") from None
        except (StaleActivationError, AgentMovedError):  # fenced off by a newer copy, or still moving hosts
            raise agent_unavailable() from None
        except AgentIdConflictError:
            detail = "another thread's id differs from this one only in case; choose another id"
            raise HttpProblem(409, "thread_id_conflict", detail) from None
        except AgentCapacityError as exc:
            retry = str(max(1, round(exc.retry_after)))
            detail = "every live thread is busy; retry shortly"
            raise HttpProblem(503, "at_capacity", detail, {"Retry-After": retry}) from None
        except StorageUnavailableError as exc:
            retry = str(max(1, round(exc.retry_after)))
            detail = "the agents' database cannot be reached right now; nothing was written, retry shortly"
            raise HttpProblem(503, "storage_unavailable", detail, {"Retry-After": retry}) from None
        except RayError as exc:
            logger.warning("agent call %s failed: %s", method, type(exc).__name__)
            raise agent_unavailable() from None

    def background(self, awaitable: Awaitable[Any], what: str) -> None:
        """Run `awaitable` after the answer; best effort, its failure never fails the request."""

        async def run() -> None:
            try:
                await awaitable
            except Exception as exc:
                logger.warning("%s failed: %s", what, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


gateway = AgentGateway()
"""This replica's gateway."""
