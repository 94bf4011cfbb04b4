"""The chat controls over HTTP (Ray Serve, the dev authorization server as the phone, the offline model):
stop, withdraw a pending approval, delete a thread; each refused with a clear 4xx JSON error on someone
else's thread or an unknown id, changing nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentrt.client import AgentRuntimeClient, ApiError
from tests.chat_world import deny_left_on_the_phone
from tests.http_fixtures import HttpApi, assert_error, ensure_http_api, new_id, read_events
from tests.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


async def ask_to_buy(http_api: HttpApi, client: AgentRuntimeClient, thread_id: str, order: str) -> dict[str, Any]:
    quantity, ticker = order.split()
    messages = await client.send_message(thread_id, f"buy {quantity} shares of {ticker}")
    (call,) = [m for m in messages if m["role"] == "tool"]
    assert call["state"] == "pending-authorization"
    binding = f"Buy {quantity} {ticker}"
    (request,) = await eventually(
        lambda: [r for r in http_api.world.requests_for("alice") if r["binding_message"] == binding],
        what=f"{binding!r} on alice's phone",
    )
    return {"call": call, "request": request}


async def test_stop_over_http_keeps_the_words_so_far(http_api: HttpApi) -> None:
    thread_id = new_id()
    async with AgentRuntimeClient(http_api.url, http_api.token("alice")) as alice:
        await alice.create_thread(thread_id)
        assert await alice.stop(thread_id) is False
        events = alice.events(thread_id)
        await read_events(events, lambda e: e.event == "ready")
        turn = asyncio.ensure_future(alice.send_message(thread_id, "count slowly to 300"))
        await read_events(events, lambda e: e.event == "token" and "3" in e.data["data"]["text"])
        await events.aclose()
        assert await alice.stop(thread_id) is True
        answer = (await asyncio.wait_for(turn, 20))[-1]
    assert answer["metadata"]["stopped"] is True
    assert answer["content"].startswith("1 2 3") and not answer["content"].endswith("300.")


async def test_withdraw_over_http_then_approving_buys_nothing(http_api: HttpApi) -> None:
    thread_id, orders_before = new_id(), http_api.world.orders()
    async with AgentRuntimeClient(http_api.url, http_api.token("alice")) as alice:
        await alice.create_thread(thread_id)
        asked = await ask_to_buy(http_api, alice, thread_id, "8 NFLX")
        call_id = asked["call"]["tool_call_id"]
        answer = await alice.withdraw_approval(thread_id, call_id)
        assert answer[-1]["role"] == "assistant"
        assert await alice.interrupts(thread_id) == []
        http_api.world.decide(asked["request"]["id"], approve=True)
        with pytest.raises(ApiError) as again:
            await alice.withdraw_approval(thread_id, call_id)
        assert again.value.status_code == 409 and again.value.error == "tool_call_not_pending"
        (tool,) = [m for m in await alice.messages(thread_id) if m["role"] == "tool"]
    assert tool["content"].startswith("Cancelled by the user")
    assert http_api.world.orders() == orders_before


async def test_delete_over_http_removes_the_thread_from_the_list_and_its_id_can_be_used_again(
    http_api: HttpApi,
) -> None:
    thread_id, kept = new_id(), new_id()
    async with AgentRuntimeClient(http_api.url, http_api.token("alice")) as alice:
        await alice.send_message(kept, "what is AAPL trading at?")
        await alice.send_message(thread_id, "what is MSFT trading at?")
        assert {thread_id, kept} <= {t["thread_id"] for t in await alice.threads()}
        await alice.delete_thread(thread_id)
        listed = {t["thread_id"] for t in await alice.threads()}
        assert thread_id not in listed and kept in listed
        with pytest.raises(ApiError) as gone:
            await alice.messages(thread_id)
        assert gone.value.status_code == 404
        created = await alice.create_thread(thread_id)  # the id is free again: a new, empty thread
        assert created["created"] is True and await alice.messages(thread_id) == []
        assert len(await alice.messages(kept)) == 4


async def test_the_controls_refuse_strangers_and_unknown_ids_changing_nothing(http_api: HttpApi) -> None:
    thread_id = new_id()
    async with AgentRuntimeClient(http_api.url, http_api.token("alice")) as alice:
        asked = await ask_to_buy(http_api, alice, thread_id, "9 AMZN")
    call_id = asked["call"]["tool_call_id"]
    async with http_api.client() as client:
        bob, alice_headers = http_api.headers("bob"), http_api.headers("alice")
        assert_error(await client.post(f"/threads/{thread_id}/stop", headers=bob), 403, "not_owner")
        assert_error(await client.delete(f"/threads/{thread_id}/interrupts/{call_id}", headers=bob), 403, "not_owner")
        assert_error(await client.delete(f"/threads/{thread_id}", headers=bob), 403, "not_owner")
        assert_error(await client.delete(f"/threads/{thread_id}"), 401)
        unknown = new_id()
        assert_error(await client.delete(f"/threads/{unknown}", headers=alice_headers), 404, "thread_not_found")
        assert_error(await client.post(f"/threads/{unknown}/stop", headers=alice_headers), 404, "thread_not_found")
        missing_call = await client.delete(f"/threads/{thread_id}/interrupts/call_nope", headers=alice_headers)
        assert_error(missing_call, 404, "unknown_tool_call")
        assert_error(await client.delete(f"/threads/{thread_id}/interrupts/{'x' * 300}", headers=alice_headers), 422)
        assert_error(await client.delete("/threads/bad%20id", headers=alice_headers), 422, "invalid_thread_id")
        # nothing changed: the purchase still waits for alice
        pending = (await client.get(f"/threads/{thread_id}/interrupts", headers=alice_headers)).json()["interrupts"]
        assert [p["tool_call_id"] for p in pending] == [call_id]
        await client.delete(f"/threads/{thread_id}", headers=alice_headers)  # (its call is withdrawn)
    assert deny_left_on_the_phone(http_api.world, "Buy 9 AMZN") == 1
