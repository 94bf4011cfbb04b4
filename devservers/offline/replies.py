"""`plan_reply`: the scripted "model" that decides what the offline model says to a conversation.

Pure and deterministic (no I/O, and only the tool-call ids are random): given the messages and the tools
offered, it answers text or tool calls the way a tool-using LLM would in the stock demo. The wire formats
(`devservers.offline.completions`, `devservers.offline.streaming`) only encode its `OfflineReply`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from devservers.offline.phrases import (
    BUY_VERB,
    NEGATED_BUY,
    PRICE_INTENT,
    SELL,
    SHOW,
    WATCH,
    buy_items,
    mentioned_symbols,
    text_of,
)

__all__ = [
    "BUY_TOOL",
    "SUMMARY_REQUEST",
    "PRICE_TOOL",
    "WATCHLIST_TOOL",
    "WATCH_TOOL",
    "OfflineReply",
    "OfflineToolCall",
    "plan_reply",
]

BUY_TOOL = "buy_stock"
PRICE_TOOL = "get_stock_price"
WATCH_TOOL = "watch_stock"
WATCHLIST_TOOL = "get_watchlist"
DEMO_TOOLS = frozenset({BUY_TOOL, PRICE_TOOL, WATCH_TOOL, WATCHLIST_TOOL})
"""The tools whose free-text requests the offline model understands; any other it calls by `/name {...}`."""


@dataclass
class OfflineToolCall:
    """One tool call the model makes: the tool's name, its arguments and a fresh `call_…` id."""

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
    pace: float = 0.0
    """Seconds between streamed chunks (a slow answer, to stop mid-stream), besides the server's own."""

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


Offered = dict[str, dict[str, Any]]
"""The function tools the model may call: name -> its parameters' JSON schema."""


def _offered_tools(tools: Any, tool_choice: Any) -> Offered:
    """The function tools the model may call (none for `tool_choice: "none"`, only the forced one for a
    named `tool_choice`)."""
    if tool_choice == "none":
        return {}
    offered: Offered = {}
    for entry in tools or []:
        if isinstance(entry, dict):
            fn = entry.get("function") if entry.get("type", "function") == "function" else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                parameters = fn.get("parameters")
                offered[fn["name"]] = parameters if isinstance(parameters, dict) else {}
    if isinstance(tool_choice, dict):
        forced = (tool_choice.get("function") or {}).get("name")
        if isinstance(forced, str):
            offered = {name: schema for name, schema in offered.items() if name == forced}
    return offered


# --------------------------------------------------------------------------------------------------------
# Answering tool results


def _tool_result_text(content: Any) -> str:
    text = text_of(content).strip()
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


def _trailing_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, message)
    return results


def _tool_names_by_call_id(messages: list[dict[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    names[str(call.get("id"))] = str((call.get("function") or {}).get("name", ""))
    return names


def _result_sentence(name: str, text: str) -> str:
    """What the model says about one result `text` of the tool `name` ("" when no call of ours matches)."""
    if name == BUY_TOOL or (not name and text.startswith("Purchased")):
        if text.startswith("Purchased"):
            return f"Done: {_sentence(text)}"
        if re.search(r"\b(?:pending|waiting)\b", text, re.I):
            return "I've asked you to approve the purchase on your device; I'll finish it then."
        return f"The purchase was not made: {_sentence(text)}"
    if name == WATCH_TOOL:
        if re.search(r"\bwaiting for the user to confirm\b", text, re.I):
            return "Please confirm in the chat that I should add it to your watchlist."
        if re.search(r"\bdenied\b", text, re.I):
            return "OK, I did not add it to your watchlist."
        return _sentence(text)
    if name == WATCHLIST_TOOL:
        return _sentence(text)
    if name == PRICE_TOOL:
        if re.search(r"\b(?:unknown|invalid|error|failed)\b", text, re.I):
            return f"I couldn't get that price: {_sentence(text)}"
        return _sentence(text)
    return f"The {name or 'tool'} tool returned: {_sentence(text or '(nothing)')}"


def _answer_tool_results(messages: list[dict[str, Any]]) -> str:
    """One sentence per tool result at the end of `messages`, about what each call came to."""
    names = _tool_names_by_call_id(messages)
    return " ".join(
        _result_sentence(names.get(str(result.get("tool_call_id")), ""), _tool_result_text(result.get("content")))
        for result in _trailing_tool_results(messages)
    )


# --------------------------------------------------------------------------------------------------------
# Answering the user


_COMMAND = re.compile(r"/([A-Za-z_][A-Za-z0-9_]{0,63})(?:\s+(\{.*\}))?", re.S)


def _command_reply(command: re.Match[str], offered: Offered) -> OfflineReply:
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


def _help_text(offered: Offered) -> str:
    abilities = []
    if PRICE_TOOL in offered:
        abilities.append('look up a demo stock price (try "What is MSFT trading at?")')
    if BUY_TOOL in offered:
        abilities.append('buy shares for you (try "Buy 10 shares of MSFT"), which you approve on your phone')
    if WATCH_TOOL in offered:
        abilities.append('keep a watchlist (try "Watch MSFT"), which you confirm here in the chat')
    others = [_command_example(name, schema) for name, schema in offered.items() if name not in DEMO_TOOLS]
    if not abilities and not others:
        return "Hi! I'm the offline demo model. No tools are available in this conversation, so I can only chat."
    text = "Hi! I'm the offline demo model."
    if abilities:
        text += " I can " + " or ".join(abilities) + "."
    if others:
        text += (
            f" I don't understand free text for {'these tools' if len(others) > 1 else 'this tool'}, but I call"
            " one when you send its name and JSON arguments: " + "; ".join(others) + "."
        )
    return text


def _command_example(name: str, schema: dict[str, Any]) -> str:
    """`/name {"arg": <placeholder>}` for a tool's parameters schema: how to call it by hand."""
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [p for p in schema.get("required") or [] if p in properties] or list(properties)
    placeholders = {"string": "...", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    example = {p: placeholders.get(str(properties[p].get("type")), "...") for p in required}
    return f"/{name} {json.dumps(example)}" if example else f"/{name}"


def _buy_reply(text: str, offered: Offered) -> OfflineReply:
    items = buy_items(text)
    if not items:
        symbols = mentioned_symbols(BUY_VERB.split(text, maxsplit=1)[-1])
        if symbols:
            return OfflineReply(content=f"How many shares of {symbols[0]} would you like to buy?")
        return OfflineReply(content='Which stock would you like to buy? For example: "Buy 10 shares of MSFT".')
    if BUY_TOOL not in offered:
        return OfflineReply(content="I can't place orders here: no buy_stock tool was offered to me.")
    return OfflineReply(tool_calls=[OfflineToolCall(BUY_TOOL, item) for item in items])


def _watch_reply(text: str, offered: Offered) -> OfflineReply:
    symbols = mentioned_symbols(WATCH.split(text, maxsplit=1)[-1]) or mentioned_symbols(text)
    if not symbols and SHOW.search(text):
        if WATCHLIST_TOOL not in offered:
            return OfflineReply(content="I can't read a watchlist here: no get_watchlist tool was offered to me.")
        return OfflineReply(tool_calls=[OfflineToolCall(WATCHLIST_TOOL, {})])
    if not symbols:
        return OfflineReply(content='Which stock should I watch for you? For example: "Watch MSFT".')
    if WATCH_TOOL not in offered:
        return OfflineReply(content="I can't keep a watchlist here: no watch_stock tool was offered to me.")
    return OfflineReply(tool_calls=[OfflineToolCall(WATCH_TOOL, {"ticker": s}) for s in symbols])


def _price_reply(text: str, offered: Offered) -> OfflineReply:
    symbols = mentioned_symbols(text)
    if not symbols:
        return OfflineReply(content='Which stock would you like a price for? For example: "Price of MSFT".')
    if PRICE_TOOL not in offered:
        return OfflineReply(content="I can't look up prices here: no get_stock_price tool was offered to me.")
    return OfflineReply(tool_calls=[OfflineToolCall(PRICE_TOOL, {"ticker": s}) for s in symbols])


def _answer_user(text: str, offered: Offered) -> OfflineReply:
    """The reply to the user's words `text`: the first intent that matches (not buying, selling, buying,
    the watchlist, a price), or what the model can do."""
    slowly = COUNT_SLOWLY.search(text) if text else None
    if slowly:  # a long, slow answer: what a user stops mid-stream
        words = " ".join(str(n) for n in range(1, min(int(slowly.group(1)), 500) + 1))
        return OfflineReply(content=f"{words}.", pace=0.2)
    if text and NEGATED_BUY.search(text):
        return OfflineReply(content="OK, I won't buy anything.")
    if text and SELL.search(text) and not BUY_VERB.search(text):
        return OfflineReply(content="This demo can only buy shares, not sell them.")
    if text and BUY_VERB.search(text):
        return _buy_reply(text, offered)
    if text and WATCH.search(text):
        return _watch_reply(text, offered)
    if text and PRICE_INTENT.search(text):
        return _price_reply(text, offered)
    return OfflineReply(content=_help_text(offered))


COUNT_SLOWLY = re.compile(r"\bcount slowly to (\d{1,4})\b", re.I)
"""`count slowly to N`: the words 1 to N, streamed 0.2 s apart."""

SUMMARY_REQUEST = "Summarize the conversation so far"
"""How a request for a conversation's summary (the agent's compaction step) starts its instructions."""

_PURCHASE = re.compile(r"Purchased \d+ shares of [A-Z][A-Z.]{0,9}")


def _summary(text: str) -> str:
    """A short summary of the summary so far plus the next part of a conversation: the stocks it names and
    the purchases made (a real model writes prose; this one keeps the facts a test can check)."""
    purchases = list(dict.fromkeys(_PURCHASE.findall(text)))[-20:]
    symbols = mentioned_symbols(text)[:30]
    said = "Stocks discussed: " + (", ".join(symbols) if symbols else "none") + "."
    return said + (" Purchases made: " + "; ".join(purchases) + "." if purchases else "")


def plan_reply(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
) -> OfflineReply:
    """The deterministic answer to `messages` given the `tools` offered (pure; no I/O)."""
    offered = _offered_tools(tools, tool_choice)
    last = messages[-1] if messages else {}
    if text_of(messages[0].get("content")).startswith(SUMMARY_REQUEST) if messages else False:
        return OfflineReply(content=_summary(text_of(last.get("content"))))
    if last.get("role") == "tool":
        return OfflineReply(content=_answer_tool_results(messages))
    text = text_of(last.get("content")) if last.get("role") == "user" else ""
    command = _COMMAND.fullmatch(text.strip()) if text else None
    if command:  # any offered tool, by name: how an agent of your own is driven without a real model
        return _command_reply(command, offered)
    reply = _answer_user(text, offered)
    if reply.tool_calls and not parallel_tool_calls:
        reply.tool_calls = reply.tool_calls[:1]
    return reply
