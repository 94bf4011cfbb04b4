"""The method markers of agents: `@public`, `@turn`, `@read`, `@internal`, and how a marked method runs.

Public: the only methods a handle (or a host's caller) may call are the ones a class marks `@public`, as a
Durable Object's `@callable()` methods are: everything else (the runtime's own `schedule`, `set_state`, a
schedule callback, an access hook) is refused before the agent is activated. A public method that does not
say `@read` runs as a turn.

Turns: methods decorated with `@turn` run one at a time, in arrival order, under the agent's asyncio lock
(FIFO); a turn calling another turn of the same agent joins it instead of deadlocking. Methods decorated
with `@read` never wait behind a turn: they only wait until start-up finished. Start-up itself runs as a
turn (`start_as_turn`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, Protocol, TypeVar

from runtime import metrics
from runtime.errors import AgentNotFoundError
from runtime.failures import is_callers_mistake
from runtime.turn_order import TURN_TICKET_KWARG, SubmissionOrder


class TurnTaker(Protocol):
    """What a marked method needs of its agent (`runtime.agent.Agent` has it all)."""

    _turn_lock: asyncio.Lock
    _turn_order: SubmissionOrder
    _turn_token: object
    _deleting: bool
    name: str
    agent_class_name: ClassVar[Callable[[], str]]

    async def _ensure_started(self) -> None: ...

    async def _report_error(self, error: BaseException, *, during: str) -> None: ...

    async def _start(self) -> None: ...

    async def on_turn_while_busy(self, method: str, args: tuple[Any, ...]) -> None: ...


P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A", bound=TurnTaker)

_current_turn: contextvars.ContextVar[object | None] = contextvars.ContextVar("agent_turn", default=None)


F = TypeVar("F", bound=Callable[..., Any])


def internal(fn: F) -> F:
    """Mark a method as the agent's own: its schedules and mixins call it, handles refuse it (so a Ray
    client in the namespace cannot run a schedule callback or an access hook out of turn)."""
    fn.__agent_internal__ = True  # type: ignore[attr-defined]
    return fn


def public(fn: F) -> F:
    """Mark a method as callable through handles: the agent's public surface, which must check its caller
    (the chat's methods verify the caller's token). A method not marked `@read` (or `@turn`) becomes a turn.
    `@internal` anywhere in the class's ancestry wins over it."""
    if not (getattr(fn, "__agent_turn__", False) or getattr(fn, "__agent_read__", False)):
        fn = turn(fn)  # type: ignore[assignment, arg-type]
    fn.__agent_public__ = True  # type: ignore[attr-defined]
    return fn


def turn(fn: Callable[Concatenate[A, P], Awaitable[R]]) -> Callable[Concatenate[A, P], Awaitable[R]]:
    """Mark an async method as a turn: it runs alone, in arrival order, after start-up."""

    @functools.wraps(fn)
    async def run_as_turn(self: A, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _run_turn(self, fn, args, kwargs)

    run_as_turn.__agent_turn__ = True  # type: ignore[attr-defined]
    run_as_turn.__signature__ = _with_ticket_parameter(fn)  # type: ignore[attr-defined]
    del run_as_turn.__wrapped__  # Ray unwraps to read signatures: make it read the one above
    return run_as_turn


def _with_ticket_parameter(fn: Callable[..., Any]) -> inspect.Signature:
    """`fn`'s signature plus the keyword-only ticket handles send (Ray checks call signatures)."""
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    ticket = inspect.Parameter(TURN_TICKET_KWARG, inspect.Parameter.KEYWORD_ONLY, default=None)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, ticket)
    else:
        params.append(ticket)
    return signature.replace(parameters=params)


def read(fn: Callable[Concatenate[A, P], Awaitable[R]]) -> Callable[Concatenate[A, P], Awaitable[R]]:
    """Mark an async method as a read: it waits for start-up only, never for a running turn. A read changes
    nothing, so a handle sends it again after its host crashed mid-call."""

    @functools.wraps(fn)
    async def run_as_read(self: A, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _run_read(self, fn, args, kwargs)

    run_as_read.__agent_read__ = True  # type: ignore[attr-defined]
    return run_as_read


# The wrappers above delegate to these module-level functions so that Ray (cloudpickle) serialises
# agent classes defined in scripts by reference to this module instead of copying the ContextVar.
async def _run_turn(agent: TurnTaker, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    ticket = kwargs.pop(TURN_TICKET_KWARG, None)
    if _current_turn.get() is agent._turn_token:
        return await fn(agent, *args, **kwargs)
    if agent._turn_lock.locked():
        try:
            await agent.on_turn_while_busy(fn.__name__, args)
        except BaseException:
            if ticket is not None:
                agent._turn_order.skip(*ticket)  # refused: the submitter's next call need not wait for it
            raise
    if ticket is not None:
        await agent._turn_order.admit(*ticket)
    # No await between admission and joining the lock's FIFO queue: admission order is turn order.
    async with agent._turn_lock:
        if agent._deleting:
            raise AgentNotFoundError(agent.name)
        token = _current_turn.set(agent._turn_token)
        started, outcome = time.perf_counter(), "ok"
        try:
            await agent._ensure_started()
            return await fn(agent, *args, **kwargs)
        except Exception as exc:
            outcome = "error"
            if not is_callers_mistake(exc):  # a bad token, a stranger's thread: an answer, not a failure
                await agent._report_error(exc, during=fn.__name__)
            raise
        finally:
            _current_turn.reset(token)
            kind = agent.agent_class_name()
            metrics.TURNS.inc(agent_class=kind, outcome=outcome)
            metrics.TURN_SECONDS.observe(time.perf_counter() - started, agent_class=kind)


async def _run_read(agent: TurnTaker, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    if agent._deleting and _current_turn.get() is not agent._turn_token:
        raise AgentNotFoundError(agent.name)
    if _current_turn.get() is not agent._turn_token:
        await agent._ensure_started()
    return await fn(agent, *args, **kwargs)


def start_as_turn(agent: TurnTaker) -> asyncio.Task[None]:
    """Run `agent._start()` in a task of its own that counts as a turn (what it calls joins it)."""
    context = contextvars.copy_context()
    context.run(_current_turn.set, agent._turn_token)  # start-up acts as a turn
    return asyncio.get_running_loop().create_task(agent._start(), context=context)


RUNTIME_ENTRY_POINTS = frozenset({"_run_due_schedules", "ready"})
"""What the runtime itself calls through a host (the alarm scheduler's wake-up, a host re-activating the
agents that were live when it crashed); never a caller's business, and harmless if one tries."""


def check_method(cls: type, method: str) -> None:
    """What a caller may call: the methods the class marks `@public` (and the runtime's entry points), and
    nothing `@internal`; anything else is AttributeError, raised before the agent is activated. The mark is
    read on the method the class resolves to, so an override that drops it is no longer callable (fails
    closed: an unmarked override would run outside the turn order)."""
    target = getattr(cls, method, None) if isinstance(method, str) else None
    allowed = callable(target) and (method in RUNTIME_ENTRY_POINTS or getattr(target, "__agent_public__", False))
    if not allowed or _is_internal(cls, method):
        raise AttributeError(
            f"{cls.__name__} has no method {method!r} that can be called (only methods marked @public can)"
        )


def _is_internal(cls: type, method: str) -> bool:
    """Marked `@internal` anywhere in the class's ancestry: an override without the marker stays internal."""
    return any(getattr(vars(base).get(method), "__agent_internal__", False) for base in cls.__mro__)
