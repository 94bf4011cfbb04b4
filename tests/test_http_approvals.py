"""Approvals over the HTTP API through Ray Serve: a purchase approved on the user's phone completes on the
/events stream, a watchlist change is confirmed in the chat (POST /tool-results), and CIBA ping mode wakes
the thread through /ciba/notify (with polling when a ping is lost). Real Ray, real HTTP on 127.0.0.1, the dev
authorization server as the user's phone, the demo checkout API and the offline model. No mocks."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from agentrt.client import AgentRuntimeClient, iter_sse
from tests.http_fixtures import (
    HttpApi,
    assert_error,
    assistant_text,
    ensure_http_api,
    new_id,
    read_events,
)
from tests.lifecycle import wait_until_hibernated
from tests.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


async def test_purchase_approved_on_the_phone_completes_on_the_events_stream(http_api: HttpApi) -> None:
    """The seed's story over HTTP: the final "Purchased ..." arrives on /events with nothing else sent."""
    world = http_api.world
    orders_before = world.orders()
    started = time.time()
    thread_id, tool = await _ask_to_buy(http_api)

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
    await _the_thread_shows_the_purchase(http_api, thread_id, seen[0].id)


async def _ask_to_buy(http_api: HttpApi) -> tuple[str, dict[str, Any]]:
    """A new thread of alice's asks to buy: the tool call waits for her approval. (thread id, tool message)"""
    world = http_api.world
    alice = http_api.headers("alice")
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
    return thread_id, tool


async def _the_thread_shows_the_purchase(http_api: HttpApi, thread_id: str, first_id: str | None) -> None:
    """The messages, the interrupts, a replay from `first_id` and the directory all show it."""
    alice = http_api.headers("alice")
    async with http_api.client() as http:
        messages = (await http.get(f"/threads/{thread_id}/messages", headers=alice)).json()["messages"]
        assert "Purchased" in next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        assert (await http.get(f"/threads/{thread_id}/interrupts", headers=alice)).json()["interrupts"] == []

        # Resuming with Last-Event-ID replays what came after it (here: from the approval on).
        assert first_id is not None
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


async def test_a_thread_waiting_for_its_users_approval_sleeps_and_the_ping_brings_it_back(http_api: HttpApi) -> None:
    """Waiting costs nothing: right after the turn that asked for approval, the thread leaves memory (its
    next check on a timer is seconds away); the user's approval pings /ciba/notify, which wakes it, and the
    purchase completes once: one CIBA request, one order."""
    thread_id = new_id()
    name = f"Chat/{thread_id}"
    async with http_api.client() as http:
        orders_before, pings_before = http_api.world.orders(), http_api.world.stats()["pings_sent"]
        request = await _pending_purchase(http, http_api, thread_id, "buy 6 shares of AAPL")
        await wait_until_hibernated(http_api.storage_dir, http_api.namespace, name, timeout=20)
        http_api.world.decide(request["id"], approve=True)
        assert await _final_purchase(http, http_api, thread_id, within=6) == "Purchased 6 shares of AAPL at 19.5"
    assert http_api.world.orders() == orders_before + 1
    assert http_api.world.stats()["pings_sent"] == pings_before + 1
    asked = [
        r
        for r in http_api.world.requests_for("alice", status=None)
        if r["binding_message"] == request["binding_message"]
    ]
    assert len(asked) == 1


async def test_ping_mode_refuses_unknown_wrong_and_replayed_notification_tokens(http_api: HttpApi) -> None:
    from tools.ciba.ping import new_notification_token, ping_key

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


async def test_a_sleeping_threads_safety_net_checks_run_without_waking_it(http_api: HttpApi) -> None:
    """Issue 22's lighter check: while the user has not answered, the safety-net checks of a sleeping
    thread (here every 8 s) are alarm probes the scheduler runs: the provider is polled, the thread stays
    asleep and is never activated. When the ping is lost and the user approves, the next probe takes the
    token, keeps it sealed, and wakes the thread, which buys exactly once with it: one CIBA request, one
    order, and no poll of its own."""
    import ray

    from runtime.placement import scheduler_name
    from tests.lifecycle import host_stats, live_agent_names

    thread_id = new_id()
    name = f"Chat/{thread_id}"
    world = http_api.world
    started = time.time()
    scheduler = ray.get_actor(scheduler_name(http_api.storage_dir.resolve()), namespace=http_api.namespace)
    async with http_api.client() as http:
        orders_before = world.orders()
        request = await _pending_purchase(http, http_api, thread_id, "buy 7 shares of AAPL")
        await wait_until_hibernated(http_api.storage_dir, http_api.namespace, name, timeout=20)
        activations = sum(s["activations"] for s in await host_stats(http_api.storage_dir, http_api.namespace))
        probed = (await scheduler.stats.remote())["probed"]
        polls = world.stats()["polls_by_request"][request["id"]]

        async def probed_twice() -> bool:
            return (await scheduler.stats.remote())["probed"] >= probed + 2

        await eventually(probed_twice, timeout=40, interval=0.2, what="two safety-net checks run as probes")
        assert world.stats()["polls_by_request"][request["id"]] >= polls + 2  # the provider was asked
        assert name not in await live_agent_names(http_api.storage_dir, http_api.namespace)
        now_activations = sum(s["activations"] for s in await host_stats(http_api.storage_dir, http_api.namespace))
        assert now_activations == activations  # no thread was woken for them, this one included

        world.authz.state.drop_pings = True
        try:
            world.decide(request["id"], approve=True)
            assert await _final_purchase(http, http_api, thread_id, within=30) == "Purchased 7 shares of AAPL at 19.5"
        finally:
            world.authz.state.drop_pings = False
    assert world.orders() == orders_before + 1
    asked = [
        r
        for r in world.requests_for("alice", status=None)
        if r["binding_message"] == request["binding_message"] and r["created_at"] >= started - 1
    ]
    assert len(asked) == 1  # alice was not asked again (other tests of the session buy 7 AAPL too)
