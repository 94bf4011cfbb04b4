"""One chat completion from any OpenAI-compatible server: streamed into (text, tool calls), or whole.

The openai SDK streams a completion as deltas: text in pieces, and each tool call's id, name and JSON
arguments in pieces by index. `stream_completion` joins them, handing each text piece to `on_token` as
it arrives (the thread's watchers see the answer being written).

The request goes out through the SDK's lower-level `post` (its documented way to send a request as built),
not `chat.completions.create`: `create` walks every message of the body through its TypedDict transforms
on each call, which made up most of a turn's CPU on long threads (a profile of the hosts: about 60% of the
event loop's busy time). Our messages are built in the endpoint's wire form already (plain JSON values),
so there is nothing to transform; the SDK still does the HTTP, the retries, the errors and the stream.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion

COMPLETIONS_PATH = "/chat/completions"


@functools.lru_cache(maxsize=8)
def shared_llm(base_url: str | None, api_key: str, timeout: float) -> AsyncOpenAI:
    """The process's client for this server: its connection pool serves every agent of a host."""
    return AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)


def request_body(request: dict[str, Any], messages_json: str) -> bytes:
    """The request's JSON with its messages spliced in as the text they were encoded to already."""
    rest = json.dumps(request, ensure_ascii=False)
    return ('{"messages": ' + messages_json + (", " + rest[1:] if rest != "{}" else "}")).encode()


async def stream_completion(
    llm: AsyncOpenAI, request: dict[str, Any], on_token: Callable[[str], None], *, messages_json: str | None = None
) -> tuple[str, list[dict[str, str]]]:
    """Run `request` (the `create()` arguments, without `stream`; with `messages_json`, the messages as
    JSON text, and none in `request`); return the text and the tool calls (`{"id", "name", "arguments"}`
    each, in index order). The SDK's errors pass through. The chunks are read as the JSON they are
    (`AsyncStream[object]`), not built into the SDK's chunk models, which was the other large share of a
    turn's CPU in the profile."""
    parts: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    if messages_json is None:
        sending: dict[str, Any] = {"body": request | {"stream": True}}
    else:
        sending = {"content": request_body(request | {"stream": True}, messages_json)}
    stream = await llm.post(COMPLETIONS_PATH, cast_to=object, stream=True, stream_cls=AsyncStream[object], **sending)
    async for chunk in stream:
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not choices:
            continue
        delta = choices[0].get("delta") or {}
        text = delta.get("content")
        if text:
            parts.append(text)
            on_token(text)
        for tool_delta in delta.get("tool_calls") or []:
            entry = calls.setdefault(int(tool_delta.get("index") or 0), {"id": "", "name": "", "arguments": ""})
            if tool_delta.get("id"):
                entry["id"] = tool_delta["id"]
            function = tool_delta.get("function") or {}
            if function.get("name"):
                entry["name"] = function["name"]
            if function.get("arguments"):
                entry["arguments"] += function["arguments"]
    return "".join(parts), [calls[i] for i in sorted(calls)]


async def complete_text(llm: AsyncOpenAI, request: dict[str, Any]) -> str:
    """Run `request` (not streamed); the answer's text ("" if it has none). The SDK's errors pass through."""
    completion = await llm.post(COMPLETIONS_PATH, body=request | {"stream": False}, cast_to=ChatCompletion)
    return (completion.choices[0].message.content or "") if completion.choices else ""


__all__ = ["complete_text", "shared_llm", "stream_completion"]
