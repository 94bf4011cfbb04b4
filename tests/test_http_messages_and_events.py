"""Messages and event streams over the HTTP API through Ray Serve: a message answered as server-sent events,
a message resent with its id answered again but stored once, an /events stream that survives an agent
restart (with a `reset`), and the caps on open event streams per thread and per user. Real Ray, real HTTP on
127.0.0.1, the offline model. No mocks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import ray

from agentrt.client import AgentRuntimeClient, iter_sse
from agents.chat import Chat
from runtime import get_agent
from tests.http_fixtures import (
    HttpApi,
    assert_error,
    ensure_http_api,
    new_id,
    read_events,
)
from tests.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


async def test_message_streams_server_sent_events_then_done(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        headers = {**alice, "Accept": "text/event-stream"}
        body = {"content": "what is MSFT trading at?"}
        async with http.stream("POST", f"/threads/{thread_id}/messages", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await read_events(iter_sse(response), lambda e: e.event in ("done", "failed"), within=30)
    kinds = [e.event for e in events]
    assert kinds[-1] == "done", events[-1]
    assert "token" in kinds and "turn_start" in kinds and "message" in kinds
    streamed = "".join(e.data["data"]["text"] for e in events if e.event == "token")
    final = events[-1].data["messages"]
    assert final[0]["role"] == "user" and final[0]["content"] == "what is MSFT trading at?"
    answer = [m for m in final if m["role"] == "assistant" and m["content"]][-1]["content"]
    assert "MSFT" in answer and answer in streamed


async def test_a_message_resent_with_its_id_is_answered_again_not_stored_twice(http_api: HttpApi) -> None:
    """A client that lost an answer resends the same `message_id`: same turn back, one message stored."""
    alice = http_api.headers("alice")
    thread_id = new_id()
    body = {"content": "what is AAPL trading at?", "message_id": "client-42"}
    async with http_api.client() as http:
        first = await http.post(f"/threads/{thread_id}/messages", json=body, headers=alice)
        again = await http.post(f"/threads/{thread_id}/messages", json=body, headers=alice)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert [m["id"] for m in again.json()["messages"]] == [m["id"] for m in first.json()["messages"]]
        assert first.json()["messages"][0]["id"] == "client-42"
        other = {"content": "something else", "message_id": "client-42"}
        assert_error(
            await http.post(f"/threads/{thread_id}/messages", json=other, headers=alice), 409, "message_id_reused"
        )
        bad = {"content": "hi", "message_id": "has spaces"}
        assert_error(await http.post(f"/threads/{thread_id}/messages", json=bad, headers=alice), 422)
        history = (await http.get(f"/threads/{thread_id}/messages", headers=alice)).json()["messages"]
    assert [m["id"] for m in history if m["role"] == "user"] == ["client-42"]


async def test_events_stream_survives_an_agent_restart_with_a_reset(http_api: HttpApi) -> None:
    """Kill the thread's host actor under an open /events stream: the stream stays, says `reset` (new epoch),
    and carries the events of the restarted agent."""
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        assert (await http.post("/threads", json={"thread_id": thread_id}, headers=alice)).status_code == 201
    async with AgentRuntimeClient(http_api.url, http_api.token("alice")) as client:
        events = client.events(thread_id, reconnect=False)
        (ready,) = await read_events(events, lambda e: e.event == "ready", within=15)
        chat = get_agent(Chat, thread_id, storage_dir=http_api.storage_dir, namespace=http_api.namespace)
        ray.kill(chat.host, no_restart=False)
        (*_, reset) = await read_events(events, lambda e: e.event == "reset", within=45)
        assert reset.data["epoch"] != ready.data["epoch"]
        await client.send_message(thread_id, "what is NVDA trading at?")
        seen = await read_events(events, lambda e: e.event == "turn_end", within=30)
        await events.aclose()
    assert any(e.event == "message" and e.id.startswith(reset.data["epoch"] + ":") for e in seen)


async def test_event_streams_are_capped_per_thread_and_per_user(http_api: HttpApi) -> None:
    """One user opening streams without end would fill the replica's request slots for everyone."""
    from contextlib import AsyncExitStack

    from tests.http_fixtures import STREAMS_PER_THREAD, STREAMS_PER_USER

    threads = [new_id() for _ in range(3)]
    async with http_api.client(headers=http_api.headers("bob")) as client, AsyncExitStack() as streams:
        for thread in threads:
            assert (await client.post("/threads", json={"thread_id": thread})).status_code == 201

        async def open_stream(thread: str) -> httpx.Response:
            return await streams.enter_async_context(client.stream("GET", f"/threads/{thread}/events"))

        for _ in range(STREAMS_PER_THREAD):
            assert (await open_stream(threads[0])).status_code == 200
        refused = await client.get(f"/threads/{threads[0]}/events")
        assert_error(refused, 429, "too_many_streams")
        assert refused.headers["retry-after"]
        for _ in range(STREAMS_PER_USER - STREAMS_PER_THREAD):
            assert (await open_stream(threads[1])).status_code == 200
        assert_error(await client.get(f"/threads/{threads[2]}/events"), 429, "too_many_streams")

    async def slots_given_back() -> bool:  # the closed streams' slots come back
        async with http_api.client(headers=http_api.headers("bob")) as again:
            async with again.stream("GET", f"/threads/{threads[2]}/events") as response:
                return response.status_code == 200

    await eventually(slots_given_back, timeout=15, what="the closed streams' slots")


async def test_the_thread_list_keeps_titles_through_quick_turns_and_a_thread_deleted_and_made_again(
    http_api: HttpApi,
) -> None:
    """Turns soon after one another do not each write to the owner's directory (`RecentTouches`), yet the
    list stays right: the first message is the title, and a thread deleted and made again under the same id
    gets the title of its new first message."""
    alice = http_api.headers("alice")
    thread_id = new_id()

    async def title() -> str | None:
        async with http_api.client() as http:
            rows = (await http.get("/threads", headers=alice)).json()["threads"]
        return next((r["title"] for r in rows if r["thread_id"] == thread_id), None)

    async with http_api.client() as http:
        for text in ("what is MSFT trading at?", "and AAPL?"):
            sent = await http.post(f"/threads/{thread_id}/messages", json={"content": text}, headers=alice)
            assert sent.status_code == 200, sent.text
        assert await eventually(title, what="the first title") == "what is MSFT trading at?"
        assert (await http.delete(f"/threads/{thread_id}", headers=alice)).status_code == 204
        assert await title() is None
        again = await http.post(f"/threads/{thread_id}/messages", json={"content": "what is NVDA at?"}, headers=alice)
        assert again.status_code == 200, again.text
    assert await eventually(lambda: _is(title, "what is NVDA at?"), what="the new title") is True


async def _is(read: Any, expected: str) -> bool:
    return await read() == expected
