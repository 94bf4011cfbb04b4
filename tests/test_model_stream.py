"""Reading a streamed completion (`agents.model_stream`): chunks whose lines are cut anywhere by the network
are put back together, text and tool calls are joined, the connection is reused after `[DONE]`, and an
error chunk in the middle of a stream is the SDK's `APIError`. A real HTTP server on 127.0.0.1 (Starlette,
serving the bytes an OpenAI-compatible server sends) and the real openai client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
from openai import APIError, AsyncOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from agents.model_stream import stream_completion
from devservers.server_thread import ServerThread


def _chunk(delta: dict[str, object]) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


ANSWER = (
    _chunk({"role": "assistant", "content": "Hel"})
    + _chunk({"content": "lo \u00e9t\u00e9"})
    + _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "buy", "arguments": '{"ti'}}]})
    + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'cker": "MSFT"}'}}]})
    + b": a comment line\n\n"
    + b"data: [DONE]\n\n"
)


CLIENT_PORTS: list[int] = []
"""The client port of each request to `/ok`: one port for all, one connection reused."""


async def _cut_in_pieces(request: Request) -> StreamingResponse:
    """The answer in 7-byte pieces: lines and UTF-8 characters are cut anywhere."""
    assert request.client is not None
    CLIENT_PORTS.append(request.client.port)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(ANSWER), 7):
            yield ANSWER[start : start + 7]
            await asyncio.sleep(0)

    return StreamingResponse(pieces(), media_type="text/event-stream")


async def _failing(request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        yield _chunk({"content": "Par"})
        yield b'data: {"error": {"message": "the model overloaded", "type": "server_error"}}\n\n'

    return StreamingResponse(pieces(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    app = Starlette(
        routes=[
            Route("/ok/chat/completions", _cut_in_pieces, methods=["POST"]),
            Route("/failing/chat/completions", _failing, methods=["POST"]),
        ]
    )
    running = ServerThread(app).start()
    yield running
    running.stop()


async def test_pieces_cut_anywhere_make_the_same_answer_and_the_connection_is_reused(server: ServerThread) -> None:
    llm = AsyncOpenAI(base_url=server.url + "/ok", api_key="k", max_retries=0)
    tokens: list[str] = []
    for _ in range(3):
        text, calls = await stream_completion(llm, {"model": "m"}, tokens.append, messages_json="[]")
        assert text == "Hello \u00e9t\u00e9"
        assert calls == [{"id": "call_1", "name": "buy", "arguments": '{"ticker": "MSFT"}'}]
    assert "".join(tokens) == "Hello \u00e9t\u00e9" * 3
    assert len(CLIENT_PORTS) == 3 and len(set(CLIENT_PORTS)) == 1, CLIENT_PORTS
    await llm.close()


async def test_an_error_chunk_mid_stream_is_the_sdks_api_error(server: ServerThread) -> None:
    llm = AsyncOpenAI(base_url=server.url + "/failing", api_key="k", max_retries=0)
    with pytest.raises(APIError, match="the model overloaded"):
        await stream_completion(llm, {"model": "m"}, lambda _: None, messages_json="[]")
    await llm.close()
