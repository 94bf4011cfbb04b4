"""A tool's parameter model, read from its function's own signature when it was given none.

The model sees a JSON schema and the agent validates the model's arguments against it before anything
runs, so every tool needs a pydantic model; writing one by hand for `list_expenses()` or
`convert(amount: float, currency: str = "EUR")` is busywork. As in the OpenAI Agents SDK and Pydantic AI,
each parameter becomes a field: its type hint is the field's type (`Annotated[int, Field(ge=1)]` adds
constraints and a description), its default makes it optional, and a parameter without a hint takes any
JSON value. `*args`, `**kwargs` and positional-only parameters cannot be named by the model: a clear
`TypeError` when the tool is made, not when the model first calls it.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What the OpenAI chat-completions API accepts as a function name."""


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an argument the tool does not take is the model's mistake


def tool_name_of(fn: Callable[..., Any], name: str | None) -> str:
    """`name`, or the function's own name; raises `TypeError` for one the model API would refuse."""
    chosen = name or getattr(fn, "__name__", "")
    if not TOOL_NAME_RE.fullmatch(chosen):
        raise TypeError(f"tool name {chosen!r} must be 1-64 letters, digits, '_' or '-' (pass name=...)")
    return chosen


def parameters_from_signature(fn: Callable[..., Any], tool_name: str) -> type[BaseModel]:
    """A pydantic model whose fields are `fn`'s parameters (see the module docstring)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # a hint naming something the function's module cannot resolve
        raise TypeError(f"tool {tool_name}: cannot read the type hints of its function ({exc})") from None
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise TypeError(
                f"tool {tool_name}: parameter {parameter.name!r} cannot be passed by name; give the tool "
                "keyword parameters, or an explicit parameters= model"
            )
        if parameter.name.startswith("_"):
            raise TypeError(f"tool {tool_name}: parameter {parameter.name!r} must not start with '_'")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    return create_model(f"{tool_name}_arguments", __base__=_Arguments, **fields)
