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
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

COMPLETIONS_PATH = "/chat/completions"


@functools.lru_cache(maxsize=8)
def shared_llm(base_url: str | None, api_key: str, timeout: float) -> AsyncOpenAI:
    """The process's client for this server: its connection pool serves every agent of a host."""
    return AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)


async def stream_completion(
    llm: AsyncOpenAI, request: dict[str, Any], on_token: Callable[[str], None]
) -> tuple[str, list[dict[str, str]]]:
    """Run `request` (the `create()` arguments, without `stream`); return the text and the tool calls
    (`{"id", "name", "arguments"}` each, in index order). The SDK's errors pass through."""
    parts: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    stream = await llm.post(
        COMPLETIONS_PATH,
        body=request | {"stream": True},
        cast_to=ChatCompletion,
        stream=True,
        stream_cls=AsyncStream[ChatCompletionChunk],
    )
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            parts.append(delta.content)
            on_token(delta.content)
        for tool_delta in delta.tool_calls or []:
            entry = calls.setdefault(tool_delta.index, {"id": "", "name": "", "arguments": ""})
            if tool_delta.id:
                entry["id"] = tool_delta.id
            if tool_delta.function is not None:
                if tool_delta.function.name:
                    entry["name"] = tool_delta.function.name
                if tool_delta.function.arguments:
                    entry["arguments"] += tool_delta.function.arguments
    return "".join(parts), [calls[i] for i in sorted(calls)]


async def complete_text(llm: AsyncOpenAI, request: dict[str, Any]) -> str:
    """Run `request` (not streamed); the answer's text ("" if it has none). The SDK's errors pass through."""
    completion = await llm.post(COMPLETIONS_PATH, body=request | {"stream": False}, cast_to=ChatCompletion)
    return (completion.choices[0].message.content or "") if completion.choices else ""


__all__ = ["complete_text", "shared_llm", "stream_completion"]
