"""The HTTP API end to end through Ray Serve: real Ray, real HTTP on 127.0.0.1, the dev authorization server
as the user's phone, the demo checkout API and the offline model. No mocks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import ray

from agentrt.client import AgentRuntimeClient, ServerEvent, iter_sse
from agents.chat import Chat
from agents.directory import ThreadDirectory, directory_id_for
from runtime import get_agent
from tests.http_fixtures import THREADS_PER_USER, HttpApi, ensure_http_api
from tests.lifecycle import live_agent_names
from tests.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


def new_id() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and body.get("detail"), body
    if code is not None:
        assert body["error"] == code, body
    return body


async def read_events(
    events: AsyncIterator[ServerEvent], until: Callable[[ServerEvent], bool], within: float = 30.0
) -> list[ServerEvent]:
    """Collect events until one satisfies `until` (deadline-bound)."""
    seen: list[ServerEvent] = []

    async def collect() -> list[ServerEvent]:
        async for event in events:
            seen.append(event)
            if until(event):
                return seen
        raise AssertionError(f"stream ended before the expected event; saw {[e.event for e in seen]}")

    try:
        return await asyncio.wait_for(collect(), within)
    except TimeoutError:
        raise AssertionError(f"timed out; saw {[(e.event, e.data) for e in seen][-10:]}") from None


def assistant_text(event: ServerEvent) -> str:
    if event.event != "message":
        return ""
    message = event.data["data"]["message"]
    return message["content"] or "" if message["role"] == "assistant" else ""


# ------------------------------------------------------------------------------------------------------


async def test_service_routes_and_openapi_schema(http_api: HttpApi) -> None:
    async with http_api.client() as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        config = (await http.get("/config")).json()
        assert config["dev_login_url"] == http_api.url + "/dev/login"
        assert config["approvals_url"] == http_api.world.authz.url + "/approvals"
        assert config["dev_authz_url"] == http_api.world.authz.url
        schema = (await http.get("/openapi.json")).json()
        paths = schema["paths"]
        for path in (
            "/threads",
            "/threads/{thread_id}/messages",
            "/threads/{thread_id}/events",
            "/threads/{thread_id}/interrupts",
            "/threads/{thread_id}/tool-results",
            "/healthz",
        ):
            assert path in paths, path
        assert {"ChatMessage", "PendingApproval", "SendMessageRequest", "ErrorBody"} <= set(
            schema["components"]["schemas"]
        )
        page = await http.get("/")
        assert page.status_code == 200 and "<title>" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert (await http.get("/static/app.js")).status_code == 200
        assert_error(await http.get("/static/../pyproject.toml"), 404)


async def test_purchase_approved_on_the_phone_completes_on_the_events_stream(http_api: HttpApi) -> None:
    """The seed's story over HTTP: the final "Purchased ..." arrives on /events with nothing else sent."""
    world = http_api.world
    alice = http_api.headers("alice")
    orders_before = world.orders()
    started = time.time()
    async with http_api.client() as http:
        created = await http.post("/threads", json={}, headers=alice)
        assert created.status_code == 201, created.text
        thread = created.json()
        thread_id = thread["thread_id"]
        assert thread["owner"] == world.subject("alice") and thread["created"] is True

        listed = (await http.get("/threads", headers=alice)).json()["threads"]
        assert thread_id in [t["thread_id"] for t in listed]

        sent = await http.post(
            f"/threads/{thread_id}/messages", json={"content": "buy 10 shares of MSFT"}, headers=alice
        )
        assert sent.status_code == 200, sent.text
        new = sent.json()["messages"]
        assert [m["role"] for m in new][0] == "user"
        (tool,) = [m for m in new if m["role"] == "tool"]
        assert tool["name"] == "buy_stock" and tool["state"] == "pending-authorization"

        (pending,) = (await http.get(f"/threads/{thread_id}/interrupts", headers=alice)).json()["interrupts"]
        assert pending["tool_call_id"] == tool["tool_call_id"]
        assert pending["kind"] == "async-authorization" and pending["binding_message"] == "Buy 10 MSFT"
        assert pending["expires_at"] > time.time()

    async with AgentRuntimeClient(http_api.url, http_api.token("alice")) as client:
        events = client.events(thread_id)
        (ready,) = await read_events(events, lambda e: e.event == "ready", within=15)
        epoch = ready.data["epoch"]

        def my_request() -> list[dict[str, Any]]:
            return [
                r
                for r in world.requests_for("alice")
                if r["binding_message"] == "Buy 10 MSFT" and r["created_at"] >= started - 1
            ]

        (request,) = await eventually(my_request, what="alice's CIBA request")
        world.decide(request["id"], approve=True)

        seen = await read_events(events, lambda e: "Purchased" in assistant_text(e), within=45)
        await events.aclose()
    results = [e.data["data"] for e in seen if e.event == "tool_result"]
    assert results and results[0]["tool_call_id"] == tool["tool_call_id"]
    assert results[0]["result"].startswith("Purchased 10 shares of MSFT")
    assert all(e.id and e.id.startswith(f"{epoch}:") for e in seen if e.event not in ("ready", "reset"))
    assert world.orders() == orders_before + 1

    async with http_api.client() as http:
        messages = (await http.get(f"/threads/{thread_id}/messages", headers=alice)).json()["messages"]
        assert "Purchased" in next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        assert (await http.get(f"/threads/{thread_id}/interrupts", headers=alice)).json()["interrupts"] == []

        # Resuming with Last-Event-ID replays what came after it (here: from the approval on).
        first_id = seen[0].id
        headers = {**alice, "Last-Event-ID": first_id, "Accept": "text/event-stream"}
        async with http.stream("GET", f"/threads/{thread_id}/events", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            replay = await read_events(iter_sse(response), lambda e: "Purchased" in assistant_text(e), within=15)
        assert [e.id for e in replay if e.id][0] != first_id

        # The thread directory: title from the first message, most recent first.
        listed = await eventually(
            lambda: _titled(http_api, thread_id), what="the thread's title in GET /threads", timeout=10
        )
        assert listed["title"] == "buy 10 shares of MSFT"


async def _titled(http_api: HttpApi, thread_id: str) -> dict[str, Any] | None:
    async with http_api.client() as http:
        rows = (await http.get("/threads", headers=http_api.headers("alice"))).json()["threads"]
    return next((r for r in rows if r["thread_id"] == thread_id and r["title"]), None)


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


async def test_create_thread_with_a_given_id_and_ownership(http_api: HttpApi) -> None:
    alice, bob = http_api.headers("alice"), http_api.headers("bob")
    thread_id = new_id()
    async with http_api.client() as http:
        first = await http.post("/threads", json={"thread_id": thread_id}, headers=alice)
        assert first.status_code == 201 and first.json()["thread_id"] == thread_id
        again = await http.post("/threads", json={"thread_id": thread_id}, headers=alice)
        assert again.status_code == 200 and again.json()["created"] is False
        assert_error(await http.post("/threads", json={"thread_id": thread_id}, headers=bob), 403, "not_owner")
        bobs = (await http.get("/threads", headers=bob)).json()["threads"]
        assert thread_id not in [t["thread_id"] for t in bobs]
        described = (await http.get(f"/threads/{thread_id}", headers=alice)).json()
        assert described["owner"] == http_api.world.subject("alice") and described["messages"] == 0


async def test_every_thread_route_needs_a_valid_token_of_the_owner(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        assert (await http.post("/threads", json={"thread_id": thread_id}, headers=alice)).status_code == 201
        routes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("POST", "/threads", {}),
            ("GET", "/threads", None),
            ("GET", f"/threads/{thread_id}", None),
            ("POST", f"/threads/{thread_id}/messages", {"content": "hello"}),
            ("GET", f"/threads/{thread_id}/messages", None),
            ("GET", f"/threads/{thread_id}/interrupts", None),
            ("POST", f"/threads/{thread_id}/tool-results", {"tool_call_id": "call_x", "approved": True}),
            ("GET", f"/threads/{thread_id}/events", None),
        ]
        tampered = _tamper(http_api.token("alice"))
        for method, path, body in routes:
            kwargs: dict[str, Any] = {"json": body} if body is not None else {}
            missing = await http.request(method, path, **kwargs)
            assert_error(missing, 401, "unauthenticated")
            assert missing.headers.get("www-authenticate", "").startswith("Bearer")
            for bad in ("not-a-jwt", tampered):
                response = await http.request(method, path, headers={"Authorization": f"Bearer {bad}"}, **kwargs)
                assert_error(response, 401, "unauthenticated")
                assert bad not in response.text  # tokens never echo back
            assert_error(await http.request(method, path, headers={"Authorization": "Basic abc"}, **kwargs), 401)
            if path.startswith(f"/threads/{thread_id}"):
                response = await http.request(method, path, headers=http_api.headers("bob"), **kwargs)
                assert_error(response, 403, "not_owner")
        # bob never became an owner of alice's thread along the way
        assert (await http.get(f"/threads/{thread_id}/messages", headers=alice)).status_code == 200

        # an unauthenticated caller cannot make the cluster create agents
        fresh = new_id()
        for bad in ("not-a-jwt", tampered):
            headers = {"Authorization": f"Bearer {bad}"}
            assert_error(await http.post(f"/threads/{fresh}/messages", json={"content": "hi"}, headers=headers), 401)
            assert_error(await http.get("/threads", headers=headers), 401)
        assert not Chat.storage_path(http_api.storage_dir, fresh).exists()
        assert not ThreadDirectory.storage_path(http_api.storage_dir, directory_id_for("auth0|mallory")).exists()
        live = await live_agent_names(http_api.storage_dir, http_api.namespace)
        assert f"Chat/{fresh}" not in live


def _tamper(token: str) -> str:
    """The same JWT with its payload changed (sub: mallory): the signature no longer matches."""
    import base64

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "auth0|mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_bad_input_gets_a_4xx_with_a_json_body(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        assert (await http.post("/threads", json={"thread_id": thread_id}, headers=alice)).status_code == 201
        messages = f"/threads/{thread_id}/messages"

        # thread ids
        assert_error(await http.get("/threads/bad%20id!/messages", headers=alice), 422, "invalid_thread_id")
        assert_error(await http.get(f"/threads/{'x' * 129}/messages", headers=alice), 422, "invalid_thread_id")
        assert_error(await http.get("/threads/../messages", headers=alice), 404)
        assert_error(
            await http.post("/threads", json={"thread_id": "no/slash"}, headers=alice), 422, "invalid_thread_id"
        )
        assert_error(await http.post("/threads", json={"thread_id": ".."}, headers=alice), 422, "invalid_thread_id")

        # malformed JSON, wrong types, missing and unknown fields, empty and overlong messages
        json_headers = {**alice, "Content-Type": "application/json"}
        assert_error(await http.post(messages, content=b'{"content": ', headers=json_headers), 422, "invalid_json")
        assert_error(await http.post(messages, content=b"\xff\xfe", headers=json_headers), (400, 422))
        assert_error(await http.post(messages, json={"content": 5}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={"content": ["a"]}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json=[], headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={"content": "hi", "x": 1}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={"content": "   "}, headers=alice), 422, "invalid_message")
        assert_error(await http.post(messages, json={"content": "a" * 9000}, headers=alice), 422, "invalid_message")
        assert_error(await http.get(f"/threads/{thread_id}/events?after=-1", headers=alice), 422, "invalid_request")
        assert_error(await http.get("/threads?limit=0", headers=alice), 422, "invalid_request")

        # oversize bodies: by Content-Length, and chunked without one
        big = json.dumps({"content": "a" * (70 * 1024)}).encode()
        assert_error(await http.post(messages, content=big, headers=json_headers), 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(70):
                yield b"a" * 1024

        chunked = await http.post(messages, content=chunks(), headers=json_headers)
        assert_error(chunked, 413, "payload_too_large")

        # tool results
        results = f"/threads/{thread_id}/tool-results"
        unknown = await http.post(results, json={"tool_call_id": "call_nope", "approved": True}, headers=alice)
        assert_error(unknown, 404, "unknown_tool_call")
        assert_error(await http.post(results, json={"tool_call_id": "c", "approved": "yes"}, headers=alice), 422)
        assert_error(await http.post(results, json={"approved": True}, headers=alice), 422, "invalid_request")

        # unknown routes and methods
        assert_error(await http.get("/nope"), 404, "not_found")
        assert_error(await http.delete(messages, headers=alice), 405, "method_not_allowed")

        # and the thread is still fine
        assert (await http.get(messages, headers=alice)).json()["messages"] == []


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


async def test_a_tool_result_for_a_call_not_awaiting_confirmation_is_409(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        sent = await http.post(f"/threads/{thread_id}/messages", json={"content": "buy 1 share of AAPL"}, headers=alice)
        (tool,) = [m for m in sent.json()["messages"] if m["role"] == "tool"]
        body = {"tool_call_id": tool["tool_call_id"], "approved": True}
        response = await http.post(f"/threads/{thread_id}/tool-results", json=body, headers=alice)
        assert_error(response, 409, "tool_call_not_awaiting_confirmation")
    # leave no pending request on alice's phone for the other tests
    for request in http_api.world.requests_for("alice"):
        if request["binding_message"] == "Buy 1 AAPL":
            http_api.world.decide(request["id"], approve=False)


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


async def test_reads_of_an_unknown_thread_are_404_and_create_nothing(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    unknown = new_id()
    async with http_api.client() as http:
        for method, path, kwargs in [
            ("GET", f"/threads/{unknown}", {}),
            ("GET", f"/threads/{unknown}/messages", {}),
            ("GET", f"/threads/{unknown}/interrupts", {}),
            ("GET", f"/threads/{unknown}/events", {}),
            ("POST", f"/threads/{unknown}/tool-results", {"json": {"tool_call_id": "call_1", "approved": True}}),
        ]:
            assert_error(await http.request(method, path, headers=alice, **kwargs), 404, "thread_not_found")
    assert not Chat.storage_path(http_api.storage_dir, unknown).exists()
    assert f"Chat/{unknown}" not in await live_agent_names(http_api.storage_dir, http_api.namespace)


async def test_the_per_user_thread_quota_answers_429_and_leaves_existing_threads_alone(http_api: HttpApi) -> None:
    carol = http_api.headers("carol")
    async with http_api.client() as http:
        kept = new_id()
        assert (await http.post("/threads", json={"thread_id": kept}, headers=carol)).status_code == 201
        sent = await http.post(f"/threads/{kept}/messages", json={"content": "what is MSFT at?"}, headers=carol)
        assert sent.status_code == 200
        directory = get_agent(
            ThreadDirectory,
            directory_id_for(http_api.world.subject("carol")),
            storage_dir=http_api.storage_dir,
            namespace=http_api.namespace,
        )
        token = http_api.token("carol")
        for i in range(THREADS_PER_USER - 1):  # fill carol's quota without making 60 agents
            await directory.add(token, f"filler-{i}")

        over = new_id()
        assert_error(await http.post("/threads", json={"thread_id": over}, headers=carol), 429, "thread_quota_exceeded")
        posted = await http.post(f"/threads/{over}/messages", json={"content": "hi"}, headers=carol)
        assert_error(posted, 429, "thread_quota_exceeded")
        assert not Chat.storage_path(http_api.storage_dir, over).exists()

        # carol's existing thread is untouched and still takes messages; opening it again is no new thread
        assert (await http.post("/threads", json={"thread_id": kept}, headers=carol)).status_code == 200
        messages = (await http.get(f"/threads/{kept}/messages", headers=carol)).json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["what is MSFT at?"]
        again = await http.post(f"/threads/{kept}/messages", json={"content": "and AAPL?"}, headers=carol)
        assert again.status_code == 200


async def test_the_watchlist_is_confirmed_in_the_chat_approve_and_deny(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        asked = (
            await http.post(f"/threads/{thread_id}/messages", json={"content": "watch MSFT"}, headers=alice)
        ).json()
        (tool,) = [m for m in asked["messages"] if m["role"] == "tool"]
        assert tool["name"] == "watch_stock" and tool["state"] == "awaiting-confirmation"
        (pending,) = (await http.get(f"/threads/{thread_id}/interrupts", headers=alice)).json()["interrupts"]
        assert pending["kind"] == "confirmation" and pending["arguments"] == {"ticker": "MSFT"}
        approved = await http.post(
            f"/threads/{thread_id}/tool-results",
            json={"tool_call_id": tool["tool_call_id"], "approved": True},
            headers=alice,
        )
        assert approved.status_code == 200, approved.text
        texts = [m["content"] for m in approved.json()["messages"] if m["role"] == "assistant"]
        assert any("Added MSFT to your watchlist" in (t or "") for t in texts)

        asked = (
            await http.post(f"/threads/{thread_id}/messages", json={"content": "watch TSLA"}, headers=alice)
        ).json()
        (tool,) = [m for m in asked["messages"] if m["role"] == "tool"]
        denied = await http.post(
            f"/threads/{thread_id}/tool-results",
            json={"tool_call_id": tool["tool_call_id"], "approved": False},
            headers=alice,
        )
        texts = [m["content"] for m in denied.json()["messages"] if m["role"] == "assistant"]
        assert any("did not add it" in (t or "") for t in texts)
        again = await http.post(
            f"/threads/{thread_id}/tool-results",
            json={"tool_call_id": tool["tool_call_id"], "approved": True},
            headers=alice,
        )
        assert_error(again, 409, "tool_call_not_awaiting_confirmation")  # answered once, for good

        shown = (
            await http.post(f"/threads/{thread_id}/messages", json={"content": "show my watchlist"}, headers=alice)
        ).json()
        assert "Your watchlist: MSFT." in [m["content"] for m in shown["messages"] if m["role"] == "assistant"][-1]
        assert (await http.get(f"/threads/{thread_id}/interrupts", headers=alice)).json()["interrupts"] == []


async def _pending_purchase(http: httpx.AsyncClient, http_api: HttpApi, thread_id: str, text: str) -> dict[str, Any]:
    alice = http_api.headers("alice")
    sent = await http.post(f"/threads/{thread_id}/messages", json={"content": text}, headers=alice)
    assert sent.status_code == 200, sent.text
    binding = (await http.get(f"/threads/{thread_id}/interrupts", headers=alice)).json()["interrupts"][0]
    (request,) = [r for r in http_api.world.requests_for("alice") if r["binding_message"] == binding["binding_message"]]
    return request


async def _final_purchase(http: httpx.AsyncClient, http_api: HttpApi, thread_id: str, within: float) -> str:
    alice = http_api.headers("alice")

    async def purchased() -> str | None:
        messages = (await http.get(f"/threads/{thread_id}/messages", headers=alice)).json()["messages"]
        tools = [m for m in messages if m["role"] == "tool" and m["state"] == "result"]
        return tools[0]["content"] if tools else None

    return await eventually(purchased, timeout=within, interval=0.02, what="the purchase after approval")


async def test_ping_mode_a_ping_makes_the_thread_fetch_the_token_at_once(http_api: HttpApi) -> None:
    """CIBA ping mode: the dev server notifies /ciba/notify when the user approves; the thread polls the
    token endpoint once, right then (its timer would only check again 2 s later)."""
    thread_id = new_id()
    async with http_api.client() as http:
        request = await _pending_purchase(http, http_api, thread_id, "buy 2 shares of AAPL")
        polls_before = http_api.world.stats()["polls_by_request"][request["id"]]
        pings_before = http_api.world.stats()["pings_sent"]
        approved_at = time.monotonic()
        http_api.world.decide(request["id"], approve=True)
        assert await _final_purchase(http, http_api, thread_id, within=30) == "Purchased 2 shares of AAPL at 19.5"
        took = time.monotonic() - approved_at
        # the same ping again (a replay): refused, nothing happens
        token = http_api.world.authz.state.requests[request["id"]].client_notification_token
        assert token
        replay = await http.post(
            "/ciba/notify", json={"auth_req_id": "x"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert_error(replay, 401, "invalid_token")
    stats = http_api.world.stats()
    assert stats["pings_sent"] == pings_before + 1
    if took < 1.5:  # finished before any timer check was due: the ping alone did it, with one poll
        assert stats["polls_by_request"][request["id"]] == polls_before + 1


async def test_ping_mode_refuses_unknown_wrong_and_replayed_notification_tokens(http_api: HttpApi) -> None:
    from tools.ciba_ping import new_notification_token, ping_key

    real_key = ping_key(http_api.world.env["AUTH0_SESSION_ENCRYPTION_KEY"])
    thread_id = new_id()
    async with http_api.client() as http:
        request = await _pending_purchase(http, http_api, thread_id, "buy 3 shares of AAPL")
        (tool_call_id,) = [i["tool_call_id"] for i in await _interrupts(http, http_api, thread_id)]
        body = {"auth_req_id": "whatever"}
        for token in (
            "not-a-token",
            new_notification_token(ping_key("a key of someone else, long enough"), thread_id, tool_call_id),  # forged
            new_notification_token(real_key, thread_id, "call_of_nothing"),  # ours, but no such pending call
            new_notification_token(real_key, thread_id, tool_call_id),  # ours, right call, not its request's
            new_notification_token(real_key, "no-such-thread", "x"),
        ):
            response = await http.post("/ciba/notify", json=body, headers={"Authorization": f"Bearer {token}"})
            assert_error(response, 401, "invalid_token")
        assert_error(await http.post("/ciba/notify", json=body), 401, "invalid_token")
        assert_error(await http.post("/ciba/notify", json={}, headers={"Authorization": "Bearer x.y.z"}), 422)
        # nothing was approved by any of that: the request and the call are still pending
        assert [r["status"] for r in http_api.world.requests_for("alice", status=None) if r["id"] == request["id"]] == [
            "pending"
        ]
        interrupts = (await http.get(f"/threads/{thread_id}/interrupts", headers=http_api.headers("alice"))).json()
        assert [i["kind"] for i in interrupts["interrupts"]] == ["async-authorization"]
        http_api.world.decide(request["id"], approve=False)
        await eventually(lambda: _tool_state(http, http_api, thread_id), timeout=30, what="the denial to be recorded")


async def _interrupts(http: httpx.AsyncClient, http_api: HttpApi, thread_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/threads/{thread_id}/interrupts", headers=http_api.headers("alice"))
    return response.json()["interrupts"]


async def _tool_state(http: httpx.AsyncClient, http_api: HttpApi, thread_id: str) -> bool:
    messages = (await http.get(f"/threads/{thread_id}/messages", headers=http_api.headers("alice"))).json()["messages"]
    return any(m["role"] == "tool" and m["state"] == "result" for m in messages)


async def test_ping_mode_a_lost_ping_still_completes_by_polling(http_api: HttpApi) -> None:
    thread_id = new_id()
    async with http_api.client() as http:
        request = await _pending_purchase(http, http_api, thread_id, "buy 4 shares of AAPL")
        http_api.world.authz.state.drop_pings = True
        try:
            http_api.world.decide(request["id"], approve=True)
            assert await _final_purchase(http, http_api, thread_id, within=30) == "Purchased 4 shares of AAPL at 19.5"
        finally:
            http_api.world.authz.state.drop_pings = False


async def signature_checks(http_api: HttpApi) -> tuple[int, int]:
    """(JWT signature checks in the ingress replica, in the agent hosts) so far."""
    from ray import serve

    from tests.http_fixtures import APP_NAME
    from tests.lifecycle import host_stats

    ingress = await serve.get_deployment_handle("AgentIngress", APP_NAME).counters.remote()
    hosts = await host_stats(http_api.storage_dir, http_api.namespace)
    in_hosts = sum(stats["counters"].get("jwt_signature_checks", 0) for stats in hosts)
    return ingress.get("jwt_signature_checks", 0), in_hosts


async def test_a_callers_token_is_checked_once_per_process_not_once_per_call(http_api: HttpApi) -> None:
    """The edge and the agents each verify a token (see `agentrt.ingress.access`), but a process that
    verified it accepts it again for a while: further messages and reads cost no signature check."""
    async with httpx.AsyncClient(base_url=http_api.world.authz.url, timeout=10) as dev:
        token = (await dev.post("/dev/login", json={"username": "bob"})).json()["access_token"]  # never used yet
    thread = new_id()
    async with http_api.client(headers={"Authorization": f"Bearer {token}"}) as client:
        before = await signature_checks(http_api)
        assert (await client.post("/threads", json={"thread_id": thread})).status_code == 201
        first = await signature_checks(http_api)
        # one check at the edge; one per host process at most (the thread and bob's directory may share one)
        assert first[0] - before[0] == 1, (before, first)
        assert 1 <= first[1] - before[1] <= 2, (before, first)
        for text in ("hello", "what is MSFT trading at?"):
            assert (await client.post(f"/threads/{thread}/messages", json={"content": text})).status_code == 200
            assert (await client.get(f"/threads/{thread}/messages")).status_code == 200
        assert (await client.get("/threads")).status_code == 200
        assert await signature_checks(http_api) == first


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
