"""One streamed chat completion from any OpenAI-compatible server, read into (text, tool calls).

The openai SDK streams a completion as deltas: text in pieces, and each tool call's id, name and JSON
arguments in pieces by index. `stream_completion` joins them, handing each text piece to `on_token` as
it arrives (the thread's watchers see the answer being written).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI


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
    stream = await llm.chat.completions.create(**request, stream=True)
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


__all__ = ["shared_llm", "stream_completion"]
