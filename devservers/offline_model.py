"""An OpenAI-compatible, deterministic, rule-based offline model: "offline-demo-model".

No weights, no network: it reads the conversation and the `tools` offered and answers the way a tool-using
LLM would in the stock demo, so the agent always speaks through the `openai` SDK even with no OpenAI key.

- Last message from the user:
  - a purchase ("buy 100 shares of MSFT", "Buy 10 MSFT at 30", "purchase 5 aapl", "buy 2 shares of
    Microsoft", "buy 10 MSFT and 5 AAPL") -> one `buy_stock` tool call per item, `{"ticker", "quantity"
    [, "price"]}` (only if `buy_stock` was offered);
  - a watchlist request ("watch MSFT", "add AAPL to my watchlist") -> `watch_stock` calls, which the user
    confirms in the chat; "show my watchlist" -> `get_watchlist`;
  - a price question ("what is MSFT trading at", "price of AAPL", "how much is nvda", "quote for TSLA")
    -> `get_stock_price` calls (only if offered);
  - `/<tool> {"arg": ...}` -> one call of any offered tool with those arguments (how an agent of your own,
    with tools this model has no rules for, is driven offline);
  - anything else -> a short friendly answer saying what it can do.
- Last message(s) tool results -> a sentence using them ("Done: Purchased 100 shares of MSFT at 25.0.",
  "The purchase was not made: The user has denied the request.").

Endpoints: `POST /v1/chat/completions` (non-streaming and `stream: true` SSE in the exact OpenAI chunk format,
tool calls streamed as index/id/name then argument fragments, `data: [DONE]` last; `stream_options.
include_usage` adds the usage chunk), `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/stats` (ready flag
and request counters for tests). Errors are OpenAI-style: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from devservers.server_thread import ServerThread
from tools.stock_prices import COMPANY_TICKERS, DEMO_PRICES, TICKER_RE

MODEL_NAME = "offline-demo-model"
OWNER = "ray-agent-runtime"
BUY_TOOL = "buy_stock"
PRICE_TOOL = "get_stock_price"
WATCH_TOOL = "watch_stock"
WATCHLIST_TOOL = "get_watchlist"

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

# --------------------------------------------------------------------------------------------------------
# The rules


@dataclass
class OfflineToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments)


@dataclass
class OfflineReply:
    """What the model says: text, or tool calls (then `content` is None)."""

    content: str | None = None
    tool_calls: list[OfflineToolCall] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


_STOPWORDS = {
    "A", "AN", "AND", "ARE", "AT", "BUY", "CAN", "DO", "EACH", "FOR", "GET", "HOW", "I", "IN", "IS", "IT",
    "ME", "MORE", "MUCH", "MY", "NOW", "OF", "OK", "ON", "OR", "PLS", "PRICE", "SELL", "SHARE", "STOCK",
    "THE", "THEM", "TO", "UNITS", "UNIT", "US", "USD", "EUR", "WHAT", "YOU", "LOT", "SOME", "ANY", "ALL",
}  # fmt: skip

_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "fifty": 50, "hundred": 100,
}  # fmt: skip

_COMPANIES = "|".join(sorted(COMPANY_TICKERS, key=len, reverse=True))
_BUY_VERB = re.compile(r"\b(?:buy|purchase|order|acquire|invest\s+in|get\s+me)\b", re.I)
_NEGATED_BUY = re.compile(r"\b(?:don'?t|do\s+not|never|stop|cancel)\s+(?:\w+\s+)?(?:buy|purchas)", re.I)
_SELL = re.compile(r"\b(?:sell|short)\b", re.I)
_BUY_ITEM = re.compile(
    r"(?:(?P<qty>\d[\d,]*|" + "|".join(_NUMBER_WORDS) + r")|(?P<one>an?)(?=\s+(?:shares?|stocks?)\b))"
    r"\s*(?:x\s*)?"
    r"(?:(?:shares?|stocks?|units?)\s+(?P<of>of\s+)?)?"
    rf"(?P<sym>(?:{_COMPANIES})\b|\$?[A-Za-z]{{1,5}}\b)"
    r"(?:\s+(?:shares?|stocks?))?"
    r"(?:\s*(?:at|@)\s*(?:(?:most|max(?:imum)?|a\s+(?:limit\s+)?price\s+of|(?:a\s+)?limit(?:\s+price)?"
    r"(?:\s+of)?)\s*)?\$?(?P<price>\d+(?:\.\d+)?))?",
    re.I,
)
_PRICE_INTENT = re.compile(
    r"\b(?:price|prices|priced|trading|trade|trades|quote|worth|cost|costs|value|valued|how\s+much|going\s+for)\b",
    re.I,
)
_WATCH = re.compile(r"\b(?:watch|watchlist|watch\s+list|track|follow)\b", re.I)
_SHOW = re.compile(r"\b(?:show|list|what'?s|what\s+is|which|my)\b", re.I)
_WORD = re.compile(r"\$?[A-Za-z]+")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return "" if content is None else str(content)


def _is_shouting(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) > 5 and all(c.isupper() for c in letters)


def _symbol(token: str, *, shouting: bool = False, allow_unknown: bool = False) -> str | None:
    """The ticker a word stands for, or None if it is just a word."""
    raw = token.strip()
    if raw.lower() in COMPANY_TICKERS:
        return COMPANY_TICKERS[raw.lower()]
    explicit = raw.startswith("$")
    upper = raw.removeprefix("$").upper()
    if not TICKER_RE.fullmatch(upper) or (upper in _STOPWORDS and not explicit):
        return None
    if upper in DEMO_PRICES or explicit or allow_unknown:
        return upper
    if raw.isupper() and not shouting:  # an unknown ticker written like one: let the tool judge it
        return upper
    return None


def _quantity(match: re.Match[str]) -> int:
    if match.group("one"):
        return 1
    qty = match.group("qty").lower()
    return _NUMBER_WORDS[qty] if qty in _NUMBER_WORDS else int(qty.replace(",", ""))


def _buy_items(text: str) -> list[dict[str, Any]]:
    shouting = _is_shouting(text)
    items = []
    for match in _BUY_ITEM.finditer(text):
        symbol = _symbol(match.group("sym"), shouting=shouting, allow_unknown=bool(match.group("of")))
        if symbol is None:
            continue
        item: dict[str, Any] = {"ticker": symbol, "quantity": _quantity(match)}
        if match.group("price"):
            item["price"] = float(match.group("price"))
        items.append(item)
    return items


def _mentioned_symbols(text: str) -> list[str]:
    shouting = _is_shouting(text)
    symbols: list[str] = []
    words = list(_WORD.finditer(text))
    for i, word in enumerate(words):
        after_of = i > 0 and words[i - 1].group().lower() in ("of", "for")
        symbol = _symbol(word.group(), shouting=shouting, allow_unknown=after_of)
        if symbol and symbol not in symbols:
            symbols.append(symbol)
    return symbols


def _offered_tools(tools: Any, tool_choice: Any) -> set[str]:
    if tool_choice == "none":
        return set()
    names = set()
    for entry in tools or []:
        if isinstance(entry, dict):
            fn = entry.get("function") if entry.get("type", "function") == "function" else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.add(fn["name"])
    if isinstance(tool_choice, dict):
        forced = (tool_choice.get("function") or {}).get("name")
        if isinstance(forced, str):
            names &= {forced}
    return names


def _tool_result_text(content: Any) -> str:
    text = _text_of(content).strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    if isinstance(decoded, str):
        return decoded.strip()
    if isinstance(decoded, dict):
        for key in ("result", "message", "content", "error", "detail"):
            if isinstance(decoded.get(key), str):
                return decoded[key].strip()
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _answer_tool_results(messages: list[dict[str, Any]]) -> str:
    results: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, message)
    names: dict[str, str] = {}
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    names[str(call.get("id"))] = str((call.get("function") or {}).get("name", ""))
    sentences = []
    for result in results:
        name = names.get(str(result.get("tool_call_id")), "")
        text = _tool_result_text(result.get("content"))
        if name == BUY_TOOL or (not name and text.startswith("Purchased")):
            if text.startswith("Purchased"):
                sentences.append(f"Done: {_sentence(text)}")
            elif re.search(r"\b(?:pending|waiting)\b", text, re.I):
                sentences.append("I've asked you to approve the purchase on your device; I'll finish it then.")
            else:
                sentences.append(f"The purchase was not made: {_sentence(text)}")
        elif name == WATCH_TOOL:
            if re.search(r"\bwaiting for the user to confirm\b", text, re.I):
                sentences.append("Please confirm in the chat that I should add it to your watchlist.")
            elif re.search(r"\bdenied\b", text, re.I):
                sentences.append("OK, I did not add it to your watchlist.")
            else:
                sentences.append(_sentence(text))
        elif name == WATCHLIST_TOOL:
            sentences.append(_sentence(text))
        elif name == PRICE_TOOL:
            if re.search(r"\b(?:unknown|invalid|error|failed)\b", text, re.I):
                sentences.append(f"I couldn't get that price: {_sentence(text)}")
            else:
                sentences.append(_sentence(text))
        else:
            sentences.append(f"The {name or 'tool'} tool returned: {_sentence(text or '(nothing)')}")
    return " ".join(sentences)


_COMMAND = re.compile(r"/([A-Za-z_][A-Za-z0-9_]{0,63})(?:\s+(\{.*\}))?", re.S)


def _command_reply(command: re.Match[str], offered: set[str]) -> OfflineReply:
    """`/tool_name {"arg": ...}`: one call of that tool with those arguments."""
    name, raw = command.group(1), command.group(2) or "{}"
    if name not in offered:
        return OfflineReply(content=f"I can't call {name} here: no such tool was offered to me.")
    try:
        arguments = json.loads(raw)
    except ValueError:
        return OfflineReply(content=f"The arguments for {name} are not valid JSON.")
    if not isinstance(arguments, dict):
        return OfflineReply(content=f"The arguments for {name} must be a JSON object.")
    return OfflineReply(tool_calls=[OfflineToolCall(name, arguments)])


def _help_text(offered: set[str]) -> str:
    abilities = []
    if PRICE_TOOL in offered:
        abilities.append('look up a demo stock price (try "What is MSFT trading at?")')
    if BUY_TOOL in offered:
        abilities.append('buy shares for you (try "Buy 10 shares of MSFT"), which you approve on your phone')
    if WATCH_TOOL in offered:
        abilities.append('keep a watchlist (try "Watch MSFT"), which you confirm here in the chat')
    if not abilities:
        return "Hi! I'm the offline demo model. No tools are available in this conversation, so I can only chat."
    return "Hi! I'm the offline demo model. I can " + " or ".join(abilities) + "."


def plan_reply(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
) -> OfflineReply:
    """The deterministic answer to `messages` given the `tools` offered (pure; no I/O)."""
    offered = _offered_tools(tools, tool_choice)
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return OfflineReply(content=_answer_tool_results(messages))
    text = _text_of(last.get("content")) if last.get("role") == "user" else ""
    calls: list[OfflineToolCall] = []
    command = _COMMAND.fullmatch(text.strip()) if text else None
    if command:  # any offered tool, by name: how an agent of your own is driven without a real model
        return _command_reply(command, offered)

    if text and _NEGATED_BUY.search(text):
        return OfflineReply(content="OK, I won't buy anything.")
    if text and _SELL.search(text) and not _BUY_VERB.search(text):
        return OfflineReply(content="This demo can only buy shares, not sell them.")
    if text and _BUY_VERB.search(text):
        items = _buy_items(text)
        if not items:
            symbols = _mentioned_symbols(_BUY_VERB.split(text, maxsplit=1)[-1])
            if symbols:
                return OfflineReply(content=f"How many shares of {symbols[0]} would you like to buy?")
            return OfflineReply(content='Which stock would you like to buy? For example: "Buy 10 shares of MSFT".')
        if BUY_TOOL not in offered:
            return OfflineReply(content="I can't place orders here: no buy_stock tool was offered to me.")
        calls = [OfflineToolCall(BUY_TOOL, item) for item in items]
    elif text and _WATCH.search(text):
        symbols = _mentioned_symbols(_WATCH.split(text, maxsplit=1)[-1]) or _mentioned_symbols(text)
        if not symbols and _SHOW.search(text):
            if WATCHLIST_TOOL not in offered:
                return OfflineReply(content="I can't read a watchlist here: no get_watchlist tool was offered to me.")
            calls = [OfflineToolCall(WATCHLIST_TOOL, {})]
        elif not symbols:
            return OfflineReply(content='Which stock should I watch for you? For example: "Watch MSFT".')
        elif WATCH_TOOL not in offered:
            return OfflineReply(content="I can't keep a watchlist here: no watch_stock tool was offered to me.")
        else:
            calls = [OfflineToolCall(WATCH_TOOL, {"ticker": s}) for s in symbols]
    elif text and _PRICE_INTENT.search(text):
        symbols = _mentioned_symbols(text)
        if not symbols:
            return OfflineReply(content='Which stock would you like a price for? For example: "Price of MSFT".')
        if PRICE_TOOL not in offered:
            return OfflineReply(content="I can't look up prices here: no get_stock_price tool was offered to me.")
        calls = [OfflineToolCall(PRICE_TOOL, {"ticker": s}) for s in symbols]
    else:
        return OfflineReply(content=_help_text(offered))
    return OfflineReply(tool_calls=calls if parallel_tool_calls else calls[:1])


# --------------------------------------------------------------------------------------------------------
# The OpenAI wire format


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _usage(messages: list[dict[str, Any]], reply: OfflineReply) -> dict[str, int]:
    prompt = sum(3 + _estimate_tokens(_text_of(m.get("content"))) for m in messages) + 3
    completion = _estimate_tokens(reply.content or "") + sum(
        3 + _estimate_tokens(c.name) + _estimate_tokens(c.arguments_json) for c in reply.tool_calls
    )
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(completion_id: str, created: int, messages: list[dict[str, Any]], reply: OfflineReply) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in reply.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": MODEL_NAME,
        "system_fingerprint": "fp_offline_demo",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": _usage(messages, reply),
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _stream_chunks(
    completion_id: str, created: int, messages: list[dict[str, Any]], reply: OfflineReply, include_usage: bool
) -> Iterable[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL_NAME,
            "system_fingerprint": "fp_offline_demo",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return body

    if reply.tool_calls:
        yield chunk({"role": "assistant", "content": None, "refusal": None})
        for index, call in enumerate(reply.tool_calls):
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _pieces(call.arguments_json, 8):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    else:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in re.findall(r"\S+\s*", reply.content or ""):
            yield chunk({"content": piece})
    yield chunk({}, reply.finish_reason)
    if include_usage:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL_NAME,
            "system_fingerprint": "fp_offline_demo",
            "choices": [],
            "usage": _usage(messages, reply),
        }


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _openai_error(status: int, message: str, *, kind: str, param: str | None = None, code: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _BadRequest("'messages' is a required property and must be an array", "messages")
    if not messages:
        raise _BadRequest("[] is too short - 'messages'", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _BadRequest(f"messages[{i}] must be an object", f"messages.[{i}]")
        if message.get("role") not in _ROLES:
            raise _BadRequest(f"messages[{i}].role must be one of {sorted(_ROLES)}", f"messages.[{i}].role")
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _BadRequest(f"messages[{i}] (role tool) needs a tool_call_id", f"messages.[{i}].tool_call_id")
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools)
    ):
        raise _BadRequest("'tools' must be an array of {type: 'function', function: {...}}", "tools")
    if not isinstance(body.get("stream", False), bool):
        raise _BadRequest("'stream' must be a boolean", "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _BadRequest("'stream_options' must be an object", "stream_options")
    return body


def create_offline_model_app(*, chunk_delay: float = 0.0) -> Starlette:
    """The offline model as an ASGI app. `chunk_delay` (seconds) paces streamed chunks for demos."""
    stats: dict[str, Any] = {
        "ready": True,
        "model": MODEL_NAME,
        "requests": 0,
        "chat_completions": 0,
        "streams": 0,
        "tool_calls": 0,
        "errors": 0,
    }

    async def chat_completions(request: Request) -> Response:
        stats["requests"] += 1
        try:
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise _BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
            body = _validate(body)
        except _BadRequest as exc:
            stats["errors"] += 1
            return _openai_error(400, exc.message, kind="invalid_request_error", param=exc.param, code=exc.code)

        messages: list[dict[str, Any]] = body["messages"]
        reply = plan_reply(
            messages,
            body.get("tools"),
            body.get("tool_choice"),
            parallel_tool_calls=body.get("parallel_tool_calls", True) is not False,
        )
        stats["chat_completions"] += 1
        stats["tool_calls"] += len(reply.tool_calls)
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(_completion(completion_id, created, messages, reply))

        stats["streams"] += 1
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            for chunk in _stream_chunks(completion_id, created, messages, reply, include_usage):
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                if chunk_delay:
                    await asyncio.sleep(chunk_delay)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _model_object() -> dict[str, Any]:
        return {"id": MODEL_NAME, "object": "model", "created": 1_700_000_000, "owned_by": OWNER}

    async def list_models(_request: Request) -> JSONResponse:
        stats["requests"] += 1
        return JSONResponse({"object": "list", "data": [_model_object()]})

    async def get_model(request: Request) -> JSONResponse:
        stats["requests"] += 1
        model = request.path_params["model"]
        if model != MODEL_NAME:
            return _openai_error(
                404, f"The model '{model}' does not exist", kind="invalid_request_error", code="model_not_found"
            )
        return JSONResponse(_model_object())

    async def get_stats(_request: Request) -> JSONResponse:
        return JSONResponse(stats)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "model": MODEL_NAME})

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        kind = "invalid_request_error" if status < 500 else "server_error"
        return _openai_error(status, str(message), kind=kind)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/v1/stats", get_stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    app.state.stats = stats
    return app


class OfflineModelServer(ServerThread):
    """The offline model on 127.0.0.1 in a background thread; point `openai` at `base_url`."""

    model = MODEL_NAME

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, chunk_delay: float = 0.0) -> None:
        super().__init__(create_offline_model_app(chunk_delay=chunk_delay), host=host, port=port)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def stats(self) -> Mapping[str, Any]:
        return self.app.state.stats

    def start(self, timeout: float = 15.0) -> OfflineModelServer:
        super().start(timeout)
        return self

    def __enter__(self) -> OfflineModelServer:
        return self.start()
