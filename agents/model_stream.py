"""One chat completion from any OpenAI-compatible server: streamed into (text, tool calls), or whole.

The openai SDK streams a completion as deltas: text in pieces, and each tool call's id, name and JSON
arguments in pieces by index. `stream_completion` joins them, handing each text piece to `on_token` as
it arrives (the thread's watchers see the answer being written).

The request goes out through the SDK's lower-level `post` (its documented way to send a request as built),
not `chat.completions.create`: `create` walks every message of the body through its TypedDict transforms
on each call, which made up most of a turn's CPU on long threads (a profile of the hosts: about 60% of the
event loop's busy time). Our messages are built in the endpoint's wire form already (plain JSON values),
so there is nothing to transform; the SDK still does the HTTP, the retries, the errors and the stream.

The SDK's HTTP goes through its aiohttp transport (`DefaultAioHttpClient`, the SDK's documented choice
"for improved concurrency performance"): aiohttp parses HTTP in C, and in the same benchmark a streamed
call cost the client 0.8 ms of CPU against 1.3 ms through the default pure-Python HTTP stack.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai import APIConnectionError, APIError, APITimeoutError, AsyncOpenAI, AsyncStream, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

COMPLETIONS_PATH = "/chat/completions"


def shared_llm(base_url: str | None, api_key: str, timeout: float) -> AsyncOpenAI:
    """The process's client for this server: its connection pool serves every agent of a host.

    One per event loop too: an aiohttp session belongs to the loop it was opened on (a host has one loop;
    a script or test that runs several loops gets a client for each)."""
    return _client_for(asyncio.get_running_loop(), base_url, api_key, timeout)


@functools.lru_cache(maxsize=8)
def _client_for(loop: asyncio.AbstractEventLoop, base_url: str | None, api_key: str, timeout: float) -> AsyncOpenAI:
    http = DefaultAioHttpClient(timeout=timeout)
    return AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2, http_client=http)


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
    (`DataLines`), not built into the SDK's chunk models, which was the other large share of a turn's CPU
    in the profile."""
    parts: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    if messages_json is None:
        sending: dict[str, Any] = {"body": request | {"stream": True}}
    else:
        sending = {"content": request_body(request | {"stream": True}, messages_json)}
    stream = await llm.post(COMPLETIONS_PATH, cast_to=object, stream=True, stream_cls=DataLines, **sending)
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


class DataLines(AsyncStream[object]):
    """The stream's `data:` lines as JSON values, split by hand.

    The SDK's stream decodes full server-sent events (event names, ids, retry fields, multi-line data) and
    hands each chunk through its response processing; a chat completion stream is one `data:` line per
    chunk, and in the hosts' profile that general decoding was the largest share left of a turn's model
    call. Errors are the SDK's: a transport failure mid-stream is `APITimeoutError` or
    `APIConnectionError`, an `error` chunk is `APIError`."""

    async def __stream__(self) -> AsyncIterator[object]:
        response = self.response
        try:
            done = False
            async for data in _data_lines(response.aiter_bytes()):
                done = done or data == b"[DONE]"
                if done:  # the rest is read to its end: the connection goes back to the pool
                    continue
                chunk = json.loads(data)
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise _stream_error(chunk["error"], response.request)
                yield chunk
        except APIError:
            raise
        except Exception as exc:  # the transport's own errors, named as the SDK's stream names them
            if "Timeout" in type(exc).__name__:
                raise APITimeoutError(request=response.request) from exc
            if any(cls.__name__ in ("RequestError", "TransportError") for cls in type(exc).__mro__):
                raise APIConnectionError(request=response.request) from exc
            raise
        finally:
            await response.aclose()


async def _data_lines(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The payloads of the `data:` lines in a byte stream, however its pieces cut the lines."""
    pending = b""
    async for piece in pieces:
        *lines, pending = (pending + piece).split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()


def _stream_error(error: Any, request: Any) -> APIError:
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return APIError(message=message, request=request, body=error)


async def complete_text(llm: AsyncOpenAI, request: dict[str, Any]) -> str:
    """Run `request` (not streamed); the answer's text ("" if it has none). The SDK's errors pass through."""
    completion = await llm.post(COMPLETIONS_PATH, body=request | {"stream": False}, cast_to=ChatCompletion)
    return (completion.choices[0].message.content or "") if completion.choices else ""


__all__ = ["complete_text", "shared_llm", "stream_completion"]
