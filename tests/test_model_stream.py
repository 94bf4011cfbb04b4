"""Reading a streamed completion (`agents.model_stream`): chunks whose lines are cut anywhere by the network
are put back together, text and tool calls are joined, the connection is reused after `[DONE]`, and an
error chunk in the middle of a stream is the SDK's `APIError`, and the transport's failures are the SDK's
connection and timeout errors. A real HTTP server on 127.0.0.1 (Starlette, serving the bytes an
OpenAI-compatible server sends) and the client the agents use (`shared_llm`: the openai SDK over aiohttp)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from openai import APIConnectionError, APIError, APITimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from agents.model_stream import shared_llm, stream_completion
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


async def _cut(request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        yield _chunk({"content": "Par"})
        raise ConnectionResetError("the server went away mid-answer")

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
            Route("/cut/chat/completions", _cut, methods=["POST"]),
        ]
    )
    running = ServerThread(app).start()
    yield running
    running.stop()


@pytest_asyncio.fixture(loop_scope="function")  # the test's loop, which the client belongs to
async def agents_client():
    """`shared_llm` as an agent gets it, closed after the test (a host closes it with its process; a test's
    event loop ends sooner, and an aiohttp session left open is reported at exit)."""
    opened = []

    def client_for(base_url: str, timeout: float = 10.0):
        opened.append(shared_llm(base_url, "k", timeout))
        return opened[-1]

    yield client_for
    for llm in opened:
        await llm.close()


async def test_pieces_cut_anywhere_make_the_same_answer_and_the_connection_is_reused(
    server: ServerThread, agents_client
) -> None:
    llm = agents_client(server.url + "/ok")
    tokens: list[str] = []
    for _ in range(3):
        text, calls = await stream_completion(llm, {"model": "m"}, tokens.append, messages_json="[]")
        assert text == "Hello \u00e9t\u00e9"
        assert calls == [{"id": "call_1", "name": "buy", "arguments": '{"ticker": "MSFT"}'}]
    assert "".join(tokens) == "Hello \u00e9t\u00e9" * 3
    assert len(CLIENT_PORTS) == 3 and len(set(CLIENT_PORTS)) == 1, CLIENT_PORTS


async def test_an_error_chunk_mid_stream_is_the_sdks_api_error(server: ServerThread, agents_client) -> None:
    llm = agents_client(server.url + "/failing")
    with pytest.raises(APIError, match="the model overloaded"):
        await stream_completion(llm, {"model": "m"}, lambda _: None, messages_json="[]")


async def test_a_connection_cut_mid_stream_is_the_sdks_connection_error(server: ServerThread, agents_client) -> None:
    """What the agent catches (`APIError`, here its `APIConnectionError` kind), not the transport's own."""
    llm = agents_client(server.url + "/cut")
    with pytest.raises(APIConnectionError):
        await stream_completion(llm, {"model": "m"}, lambda _: None, messages_json="[]")


async def test_a_silent_server_is_the_sdks_timeout(agents_client) -> None:
    """A server that accepts and never answers: the client's read timeout, named as the SDK names it."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        llm = agents_client(f"http://127.0.0.1:{port}", 0.5)
        with pytest.raises(APITimeoutError):
            await llm.with_options(max_retries=0).post("/chat/completions", body={}, cast_to=object)
