"""The offline demo model through the real `openai` SDK: tool calls and answers, streamed and not."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from demo.stocks import buy_stock, get_stock_price
from devservers.offline_model import MODEL_NAME, OfflineModelServer, plan_reply

TOOLS = [buy_stock.openai_schema(), get_stock_price.openai_schema()]


@pytest.fixture(scope="module")
def server():
    with OfflineModelServer() as s:
        yield s


def _client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="offline", max_retries=0, timeout=10)


def _user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful trading assistant."}, {"role": "user", "content": text}]


def _after_tool(name: str, arguments: dict, result: str) -> list[dict]:
    call = {"id": "call_abc123", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return [
        *_user("Buy 100 shares of MSFT"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": result},
    ]


async def _stream(client: openai.AsyncOpenAI, messages: list[dict], **kwargs) -> tuple[str, list[dict], list]:
    """Accumulate a stream the way an agent does: content pieces and tool-call deltas by index."""
    content, calls, chunks = "", {}, []
    stream = await client.chat.completions.create(model=MODEL_NAME, messages=messages, stream=True, **kwargs)
    async for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
    return content, [calls[i] for i in sorted(calls)], chunks


async def test_buy_tool_call_non_streaming(server):
    async with _client(server) as client:
        completion = await client.chat.completions.create(
            model=MODEL_NAME, messages=_user("buy 100 shares of MSFT"), tools=TOOLS
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "buy_stock"
    assert json.loads(call.function.arguments) == {"ticker": "MSFT", "quantity": 100}
    # The arguments validate against the real tool's parameter model.
    assert buy_stock.parse_arguments(call.function.arguments).model_dump() == {
        "ticker": "MSFT",
        "quantity": 100,
        "price": None,
    }
    assert completion.model == MODEL_NAME
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


async def test_buy_tool_call_streaming(server):
    async with _client(server) as client:
        content, calls, chunks = await _stream(client, _user("Buy 10 MSFT at 30"), tools=TOOLS)
    assert content == ""
    assert len(calls) == 1
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "buy_stock"
    assert json.loads(calls[0]["arguments"]) == {"ticker": "MSFT", "quantity": 10, "price": 30.0}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in chunks}) == 1


async def test_parallel_tool_calls_have_unique_ids(server):
    async with _client(server) as client:
        completion = await client.chat.completions.create(
            model=MODEL_NAME, messages=_user("Buy 10 MSFT and 5 AAPL"), tools=TOOLS
        )
        _, streamed, _ = await _stream(client, _user("Buy 10 MSFT and 5 AAPL"), tools=TOOLS)
        single = await client.chat.completions.create(
            model=MODEL_NAME, messages=_user("Buy 10 MSFT and 5 AAPL"), tools=TOOLS, parallel_tool_calls=False
        )
    calls = completion.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["ticker"] for c in calls] == ["MSFT", "AAPL"]
    assert [json.loads(c["arguments"])["ticker"] for c in streamed] == ["MSFT", "AAPL"]
    ids = [c.id for c in calls] + [c["id"] for c in streamed]
    assert len(set(ids)) == 4
    assert len(single.choices[0].message.tool_calls) == 1


async def test_sdk_stream_helper_accumulates_tool_calls(server):
    async with _client(server) as client:
        async with client.chat.completions.stream(
            model=MODEL_NAME, messages=_user("purchase 5 aapl"), tools=TOOLS
        ) as stream:
            async for _event in stream:
                pass
            final = await stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "buy_stock"
    assert json.loads(call.function.arguments) == {"ticker": "AAPL", "quantity": 5}


async def test_price_question_calls_get_stock_price(server):
    async with _client(server) as client:
        completion = await client.chat.completions.create(
            model=MODEL_NAME, messages=_user("what is MSFT trading at?"), tools=TOOLS
        )
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "get_stock_price"
    assert json.loads(call.function.arguments) == {"ticker": "MSFT"}


@pytest.mark.parametrize(
    ("name", "arguments", "result", "answer"),
    [
        (
            "buy_stock",
            {"ticker": "MSFT", "quantity": 100},
            "Purchased 100 shares of MSFT at 25.0",
            "Done: Purchased 100 shares of MSFT at 25.0.",
        ),
        (
            "buy_stock",
            {"ticker": "MSFT", "quantity": 100},
            "The user has denied the request",
            "The purchase was not made: The user has denied the request.",
        ),
        ("get_stock_price", {"ticker": "MSFT"}, "MSFT is trading at 25.0 USD", "MSFT is trading at 25.0 USD."),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_answers_from_tool_results(server, name, arguments, result, answer, stream):
    messages = _after_tool(name, arguments, result)
    async with _client(server) as client:
        if stream:
            content, calls, chunks = await _stream(
                client, messages, tools=TOOLS, stream_options={"include_usage": True}
            )
            assert calls == []
            assert chunks[-2].choices[0].finish_reason == "stop"
            assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
        else:
            completion = await client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS)
            content = completion.choices[0].message.content
            assert completion.choices[0].finish_reason == "stop"
            assert not completion.choices[0].message.tool_calls
    assert content == answer


async def test_text_answers_stream_and_non_stream_agree(server):
    async with _client(server) as client:
        completion = await client.chat.completions.create(model=MODEL_NAME, messages=_user("hello"), tools=TOOLS)
        streamed, _, _ = await _stream(client, _user("hello"), tools=TOOLS)
        no_tools = await client.chat.completions.create(model=MODEL_NAME, messages=_user("buy 100 MSFT"))
    text = completion.choices[0].message.content
    assert "offline demo model" in text and "Buy 10 shares of MSFT" in text
    assert streamed == text
    # A buy request without the buy_stock tool offered is answered in words, never a tool call.
    assert no_tools.choices[0].message.tool_calls is None
    assert "buy_stock" in no_tools.choices[0].message.content


async def test_models_and_stats(server):
    async with _client(server) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL_NAME]
        assert (await client.models.retrieve(MODEL_NAME)).id == MODEL_NAME
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-imaginary")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        before = (await http.get("/stats")).json()
        await http.post("/chat/completions", json={"model": MODEL_NAME, "messages": _user("hi")})
        after = (await http.get("/stats")).json()
    assert after["ready"] is True
    assert after["chat_completions"] == before["chat_completions"] + 1


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (json.dumps({"model": MODEL_NAME}).encode(), "messages"),
        (json.dumps({"model": MODEL_NAME, "messages": []}).encode(), "messages"),
        (
            json.dumps({"model": MODEL_NAME, "messages": [{"role": "robot", "content": "x"}]}).encode(),
            "messages.[0].role",
        ),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (
            json.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "tools": "no"}).encode(),
            "tools",
        ),
    ],
)
async def test_bad_requests_are_openai_style_400(server, content, param):
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.post("/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_sdk_raises_bad_request(server):
    async with _client(server) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL_NAME, messages=[])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("buy 100 shares of MSFT", [{"ticker": "MSFT", "quantity": 100}]),
        ("Buy 10 MSFT at 30", [{"ticker": "MSFT", "quantity": 10, "price": 30.0}]),
        ("purchase 5 aapl", [{"ticker": "AAPL", "quantity": 5}]),
        ("Please buy 2 shares of Microsoft", [{"ticker": "MSFT", "quantity": 2}]),
        ("buy a share of nvda", [{"ticker": "NVDA", "quantity": 1}]),
        ("buy 1,000 shares of TSLA at $30.50", [{"ticker": "TSLA", "quantity": 1000, "price": 30.5}]),
        ("order ten shares of google", [{"ticker": "GOOGL", "quantity": 10}]),
        ("BUY 100 MSFT", [{"ticker": "MSFT", "quantity": 100}]),
    ],
)
def test_plan_reply_buy_phrasings(text, expected):
    reply = plan_reply(_user(text), TOOLS)
    assert [c.name for c in reply.tool_calls] == ["buy_stock"] * len(expected)
    assert [c.arguments for c in reply.tool_calls] == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("buy MSFT", "How many shares of MSFT"),
        ("buy something nice", "Which stock would you like to buy"),
        ("don't buy MSFT", "won't buy"),
        ("sell 5 MSFT", "only buy"),
        ("what's the price?", "Which stock would you like a price for"),
    ],
)
def test_plan_reply_clarifies(text, fragment):
    reply = plan_reply(_user(text), TOOLS)
    assert not reply.tool_calls
    assert fragment in reply.content


def test_plan_reply_price_phrasings_and_tool_choice_none():
    for text, tickers in (
        ("price of AAPL", ["AAPL"]),
        ("how much is nvda", ["NVDA"]),
        ("quote for TSLA and Microsoft", ["TSLA", "MSFT"]),
    ):
        reply = plan_reply(_user(text), TOOLS)
        assert [c.arguments["ticker"] for c in reply.tool_calls] == tickers
        assert {c.name for c in reply.tool_calls} == {"get_stock_price"}
    assert not plan_reply(_user("buy 100 MSFT"), TOOLS, tool_choice="none").tool_calls


async def test_with_tools_of_your_own_it_names_them_and_how_to_call_one(server):
    """Review: for free text it has no rule for, with an agent's own tools offered, the offline model says
    which tools exist and how to call one by hand, instead of "No tools are available"."""
    from tools import Tool

    async def submit_expense(amount: float, merchant: str, note: str = "") -> str: ...

    async def list_expenses() -> str: ...

    own = [Tool(submit_expense, description="Submit one expense.").openai_schema(), Tool(list_expenses).openai_schema()]
    async with _client(server) as client:
        completion = await client.chat.completions.create(
            model=MODEL_NAME, messages=_user("submit an expense of 42.50 at Acme"), tools=own
        )
        text = completion.choices[0].message.content
        assert not completion.choices[0].message.tool_calls
        assert "No tools are available" not in text
        assert '/submit_expense {"amount": 1.5, "merchant": "..."}' in text
        assert "/list_expenses" in text
        example = text.split("; ")[0].split(": ", 1)[1]  # the example, sent back as it is, is a call
        called = await client.chat.completions.create(model=MODEL_NAME, messages=_user(example), tools=own)
        (call,) = called.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == (
            "submit_expense",
            {"amount": 1.5, "merchant": "..."},
        )
