"""The offline model's streamed answer: `chat.completion.chunk`s as OpenAI sends them, framed as SSE.

Text is streamed word by word; a tool call first as its index, id and name, then its arguments in
8-character fragments, the way clients that accumulate deltas (the `openai` SDK's stream helper) expect.
The finish chunk comes last, then the usage chunk if `stream_options.include_usage` asked for it, then
`data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from starlette.responses import StreamingResponse

from devservers.offline.completions import MODEL_NAME, SYSTEM_FINGERPRINT, usage
from devservers.offline.replies import OfflineReply

__all__ = ["sse_response", "stream_chunks"]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _deltas(reply: OfflineReply) -> Iterator[dict[str, Any]]:
    """The `delta`s that spell out `reply`, before its finish chunk."""
    if reply.tool_calls:
        yield {"role": "assistant", "content": None, "refusal": None}
        for index, call in enumerate(reply.tool_calls):
            function = {"name": call.name, "arguments": ""}
            yield {"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]}
            for piece in _pieces(call.arguments_json, 8):
                yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
    else:
        yield {"role": "assistant", "content": "", "refusal": None}
        for piece in re.findall(r"\S+\s*", reply.content or ""):
            yield {"content": piece}


def _chunk(completion_id: str, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_NAME,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }


def stream_chunks(
    completion_id: str, created: int, messages: list[dict[str, Any]], reply: OfflineReply, include_usage: bool
) -> Iterator[dict[str, Any]]:
    """The chunks of the streamed answer to `messages` with `reply` (each with `usage: null` when the
    usage chunk follows, as OpenAI sends them)."""

    def choice_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body = _chunk(
            completion_id, created, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        if include_usage:
            body["usage"] = None
        return body

    for delta in _deltas(reply):
        yield choice_chunk(delta)
    yield choice_chunk({}, reply.finish_reason)
    if include_usage:
        yield {**_chunk(completion_id, created, []), "usage": usage(messages, reply)}


async def _sse_events(chunks: Iterable[dict[str, Any]], chunk_delay: float) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        if chunk_delay:
            await asyncio.sleep(chunk_delay)
    yield b"data: [DONE]\n\n"


def sse_response(chunks: Iterable[dict[str, Any]], *, chunk_delay: float = 0.0) -> StreamingResponse:
    """`chunks` as a `text/event-stream` response, `chunk_delay` seconds apart, ending in `data: [DONE]`."""
    return StreamingResponse(
        _sse_events(chunks, chunk_delay),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
