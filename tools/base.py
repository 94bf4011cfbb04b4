"""The tool abstraction shared by the chat agent, the CIBA wrapper and the demo tools.

A tool is a named (async) function with a pydantic parameter model, so the LLM sees a JSON schema and the
agent validates the model's arguments before anything runs; the model is read from the function's type
hints unless one is given (`tools.tool_parameters`). What a tool raises decides what the model reads:
`ToolError("...")` is its answer to a mistake (the model reads "Error: ..." and may correct itself);
`TransientToolError` runs it again later; any other exception is a bug, shown to the model only as
"Error: <tool> failed (<ExceptionType>)" and recorded, with its message, in the storage root's failure
journal (`agentrt logs`, and the terminal of `agentrt serve`). The agent passes a `ToolContext` naming the
tool call, the thread and its owner: wrappers such as `with_async_user_confirmation` key their durable
state on it and take the CIBA user from it (never from the LLM's arguments).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from tools.tool_parameters import parameters_from_signature, tool_name_of


class ToolError(Exception):
    """A failure the LLM should see as the tool's result (bad arguments, unknown ticker, ...): raise it for
    what the model or the user can correct. Its message is the model's to read (the user may see it too),
    so it must name the problem and hold no secret; the call ends as `Error: <message>`."""


class TransientToolError(Exception):
    """The tool could not finish for a reason that may pass (a 503, a timeout, a refused connection), and
    running it again is safe (its side effect is idempotent). The agent keeps the call running and runs it
    again on a durable schedule, after `retry_after` seconds at least, instead of reporting a failure."""

    def __init__(self, message: str, retry_after: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.retry_after))


class OutcomeUnknownError(TransientToolError):
    """The tool's side effect may have happened and nobody knows yet: its request was sent and the answer
    lost (a timeout, a 502/504), and finding out (by its idempotency key) failed too. Unknown is not
    failed: the agent never reports the call as failed nor invites the user to repeat it; it keeps the
    call running, says the outcome is not known yet, and runs the tool again on its durable schedule,
    with `ToolContext.outcome_unknown` set so that the tool finds out first."""


@dataclass(frozen=True)
class ToolContext:
    """Who is calling a tool, and for which tool call: the key of every durable decision about it."""

    tool_call_id: str
    thread_id: str
    owner: str | None = None
    agent_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    outcome_unknown: bool = False
    """An earlier run of this very call may have had its effect (it raised `OutcomeUnknownError`): look
    before acting again."""


_current_context: contextvars.ContextVar[ToolContext | None] = contextvars.ContextVar("tool_context", default=None)


def current_tool_context() -> ToolContext:
    """The context of the tool call being executed; raises outside a tool call."""
    ctx = _current_context.get()
    if ctx is None:
        raise RuntimeError("current_tool_context() called outside a tool call")
    return ctx


@contextlib.contextmanager
def tool_context(ctx: ToolContext) -> Iterator[ToolContext]:
    """Run the block as the tool call `ctx` (what `current_tool_context()` returns inside it)."""
    token = _current_context.set(ctx)
    try:
        yield ctx
    finally:
        _current_context.reset(token)


ToolFunction = Callable[..., Awaitable[Any] | Any]


class Tool:
    """A tool the LLM may call.

    `fn` receives the validated parameter model's fields as keyword arguments. `name` defaults to the
    function's name, `description` to its docstring, and `parameters` to a model read from its signature
    (`async def list_expenses()` needs none; `async def book(city: str, seats: int = 1)` gets one).
    `requires_confirmation` marks a tool that waits for an in-chat approve/deny before it runs.
    """

    def __init__(
        self,
        fn: ToolFunction,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: type[BaseModel] | None = None,
        requires_confirmation: bool = False,
    ) -> None:
        self.fn = fn
        self.name = tool_name_of(fn, name)
        self.description = description if description is not None else (inspect.getdoc(fn) or "")
        self.parameters = parameters if parameters is not None else parameters_from_signature(fn, self.name)
        self.requires_confirmation = requires_confirmation

    def parse_arguments(self, arguments: str | dict[str, Any]) -> BaseModel:
        """Validate the LLM's arguments (JSON text or dict); raise `ToolError` naming the problem."""
        try:
            if isinstance(arguments, str):
                return self.parameters.model_validate_json(arguments or "{}")
            return self.parameters.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolError(f"invalid arguments for {self.name}: {problems}") from None

    async def run(self, args: BaseModel, ctx: ToolContext) -> Any:
        """Run the tool with validated arguments inside `ctx`."""
        with tool_context(ctx):
            result = self.fn(**args.model_dump())
            if inspect.isawaitable(result):
                result = await result
            return result

    def openai_schema(self) -> dict[str, Any]:
        """The tool declaration in the OpenAI chat-completions `tools` format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters_schema(self.parameters),
            },
        }


_SCHEMAS: weakref.WeakKeyDictionary[type[BaseModel], dict[str, Any]] = weakref.WeakKeyDictionary()


def parameters_schema(parameters: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a tool's parameters model, built once per model class (pydantic's schema
    generation costs about a millisecond, and every activation of a thread offers its tools again); kept
    only as long as the class lives (a model made per activation goes with it). Shared: read only."""
    schema = _SCHEMAS.get(parameters)
    if schema is None:
        schema = _SCHEMAS[parameters] = parameters.model_json_schema()
    return schema


def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: type[BaseModel] | None = None,
    requires_confirmation: bool = False,
) -> Callable[[ToolFunction], Tool]:
    """Decorator form: `@tool()` (or `@tool(description=..., parameters=Model)`) over an (async) function."""

    def wrap(fn: ToolFunction) -> Tool:
        return Tool(
            fn,
            name=name,
            description=description,
            parameters=parameters,
            requires_confirmation=requires_confirmation,
        )

    return wrap
