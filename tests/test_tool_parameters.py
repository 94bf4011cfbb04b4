"""Tools as users write them: no `parameters` model for a tool without arguments, parameters read from the
function's type hints (constraints and descriptions through `Annotated`), an explicit model still allowed,
and a clear `TypeError` when the tool is made for what the model could never call. An agent of your own
needs only the public imports (`agents`, `tools`)."""

from __future__ import annotations

import ast
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

import agents
import tools
from tests.conftest import REPO_ROOT
from tools import Tool, ToolContext, ToolError, tool


async def run(t: Tool, arguments: str) -> Any:
    return await t.run(t.parse_arguments(arguments), ToolContext(tool_call_id="call-1", thread_id="t-1"))


async def test_a_tool_without_arguments_needs_no_parameters_model() -> None:
    async def list_expenses() -> list[str]:
        """List the expenses submitted so far."""
        return ["42.50 at Acme"]

    listed = Tool(list_expenses)
    declaration = listed.openai_schema()["function"]
    assert declaration["name"] == "list_expenses"
    assert declaration["description"] == "List the expenses submitted so far."
    assert declaration["parameters"]["properties"] == {}
    assert await run(listed, "") == ["42.50 at Acme"]  # models send "" or "{}" for no arguments
    assert await run(listed, "{}") == ["42.50 at Acme"]


async def test_a_tool_described_by_its_type_hints_validates_like_a_model() -> None:
    @tool()
    async def submit_expense(
        amount: Annotated[float, Field(gt=0, description="In euros")], merchant: str, note: str = ""
    ) -> str:
        """Submit one expense."""
        return f"{amount:.2f} at {merchant}{' (' + note + ')' if note else ''}"

    schema = submit_expense.openai_schema()["function"]["parameters"]
    assert schema["required"] == ["amount", "merchant"]
    assert schema["properties"]["amount"]["description"] == "In euros"
    assert await run(submit_expense, '{"amount": 42.5, "merchant": "Acme"}') == "42.50 at Acme"
    with pytest.raises(ToolError, match=r"invalid arguments for submit_expense: amount: .*greater than 0"):
        submit_expense.parse_arguments('{"amount": -1, "merchant": "Acme"}')
    with pytest.raises(ToolError, match="merchant: Field required"):
        submit_expense.parse_arguments('{"amount": 1}')
    with pytest.raises(ToolError, match="currency: Extra inputs are not permitted"):
        submit_expense.parse_arguments('{"amount": 1, "merchant": "Acme", "currency": "USD"}')


async def test_an_explicit_parameters_model_still_wins() -> None:
    class Lookup(BaseModel):
        ticker: str = Field(pattern="^[A-Z]{1,5}$")

    async def price(**arguments: Any) -> str:
        return arguments["ticker"]

    looked_up = Tool(price, name="price", description="A price.", parameters=Lookup)
    assert await run(looked_up, '{"ticker": "MSFT"}') == "MSFT"


def test_what_the_model_could_never_call_is_refused_when_the_tool_is_made() -> None:
    async def spread(*tickers: str) -> None: ...

    with pytest.raises(TypeError, match="'tickers' cannot be passed by name"):
        Tool(spread)
    with pytest.raises(TypeError, match="tool name '<lambda>'"):
        Tool(lambda: None)


def test_an_agent_of_your_own_needs_only_the_public_imports() -> None:
    """`examples/travel_agent.py` imports `agents` and `tools` themselves, never their modules; and every
    name in their `__all__` is there."""
    source = ast.parse((REPO_ROOT / "examples" / "travel_agent.py").read_text())
    ours = {"runtime", "agents", "tools", "auth", "agentrt"}
    imported = {
        node.module
        for node in ast.walk(source)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours
    }
    assert imported == {"agents", "tools"}
    for package in (agents, tools):
        assert all(hasattr(package, name) for name in package.__all__)
    assert (REPO_ROOT / "agents" / "py.typed").exists() and (REPO_ROOT / "tools" / "py.typed").exists()
