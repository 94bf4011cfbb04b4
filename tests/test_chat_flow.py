"""The Chat thread agent end to end (issue 4): real Ray, the dev authorization server, the checkout API and
the offline model over HTTP. The user's "phone" is the dev server's approval API."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

import runtime
from agents.chat import Chat
from agents.errors import InvalidMessageError, MessageIdReusedError, ToolCallNotAwaitingError, UnknownToolCallError
from demo.order_details import purchase_details
from runtime import get_agent
from tests.chat_agents_under_test import ConfirmingChat, CrashableChat, ShortExpiryChat
from tests.chat_world import ChatWorld
from tests.conftest import ray_init_kwargs
from tests.test_runtime_identity_storage import RESTARTING
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("chat_world")


def stable(message: Any) -> dict[str, Any]:
    """A message without the fields a pending call's polls keep updating (next check time)."""
    data = message.model_dump()
    for call in data.get("tool_calls") or []:
        call.pop("interrupt", None)
        call.pop("updated_at", None)
    if data["role"] == "tool":
        data.pop("created_at")
    return data


def new_thread_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def tool_messages(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.role == "tool"]


def final_text(messages: list[Any]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "assistant" and m.content), "")


async def wait_for_requests(world: ChatWorld, user: str, count: int) -> list[dict[str, Any]]:
    return await eventually(
        lambda: (lambda r: r if len(r) >= count else None)(world.requests_for(user)),
        timeout=20,
        what=f"{count} pending CIBA request(s) for {user}",
    )


async def wait_for_final(agent: Any, token: str, needle: str, timeout: float = 30) -> list[Any]:
    async def finished() -> list[Any] | None:
        messages = await agent.get_messages(token)
        return messages if needle in final_text(messages) else None

    return await eventually(
        finished, timeout=timeout, interval=0.1, what=f"final message with {needle!r}", ignore=RESTARTING
    )


async def test_buy_stock_waits_for_approval_then_resumes_by_itself(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice = world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    before = world.stats()["backchannel_requests"]
    orders_before = world.orders()

    new = await agent.send_message(alice, "Buy 100 shares of MSFT")
    (tool,) = tool_messages(new)
    assert tool.name == "buy_stock" and tool.state == "pending-authorization"
    assert "approve" in final_text(new).lower()
    (pending,) = await agent.get_pending_approvals(alice)
    assert pending.kind == "async-authorization" and pending.binding_message == "Buy 100 MSFT"

    (request,) = await wait_for_requests(world, "alice", 1)
    assert request["binding_message"] == "Buy 100 MSFT"
    assert "stock:buy" in request["scope"]
    # RAR: the user approves this very order, and the checkout will place nothing else with the token
    assert request["authorization_details"] == purchase_details("MSFT", 100)
    assert world.stats()["backchannel_requests"] == before + 1
    assert world.orders() == orders_before

    approved_at = time.time()
    world.decide(request["id"], approve=True)
    messages = await wait_for_final(agent, alice, "Purchased 100 shares of MSFT at 25.0")
    elapsed = time.time() - approved_at

    assert world.orders() == orders_before + 1
    assert world.stats()["backchannel_requests"] == before + 1
    (tool,) = tool_messages(messages)
    assert tool.state == "result" and tool.content == "Purchased 100 shares of MSFT at 25.0"
    assert await agent.get_pending_approvals(alice) == []
    # The interval (1 s here) was respected: no more polls than the time allows.
    polls = world.stats()["polls_by_request"][request["id"]]
    created = request["created_at"]
    assert 1 <= polls <= (approved_at + elapsed - created) / 1.0 + 2


async def test_denied_purchase_reports_denial_and_places_no_order(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice = world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    orders_before = world.orders()
    await agent.send_message(alice, "Buy 7 shares of AAPL")
    (request,) = await wait_for_requests(world, "alice", 1)
    world.decide(request["id"], approve=False)
    messages = await wait_for_final(agent, alice, "The user has denied the request")
    (tool,) = tool_messages(messages)
    assert tool.state == "result" and tool.content == "The user has denied the request"
    assert world.orders() == orders_before


async def test_expired_request_reports_expiry_and_places_no_order(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice = world.token("alice")
    agent = get_agent(ShortExpiryChat, new_thread_id(), storage_dir=storage_dir)
    orders_before = world.orders()
    await agent.send_message(alice, "Buy 3 shares of NVDA")
    await wait_for_requests(world, "alice", 1)

    async def expired() -> Any:
        messages = await agent.get_messages(alice)
        (tool,) = tool_messages(messages)
        return messages if tool.state == "result" else None

    messages = await eventually(expired, timeout=20, what="expired result")
    (tool,) = tool_messages(messages)
    assert "expired" in tool.content.lower()
    assert world.orders() == orders_before
    assert world.requests_for("alice") == []


async def test_two_pending_purchases_approved_in_opposite_order(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice = world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    orders_before = world.orders()
    new = await agent.send_message(alice, "Buy 10 MSFT and 5 AAPL")
    assert [t.state for t in tool_messages(new)] == ["pending-authorization", "pending-authorization"]
    requests = await wait_for_requests(world, "alice", 2)
    by_message = {r["binding_message"]: r for r in requests}
    assert set(by_message) == {"Buy 10 MSFT", "Buy 5 AAPL"}

    world.decide(by_message["Buy 5 AAPL"]["id"], approve=True)
    await wait_for_final(agent, alice, "Purchased 5 shares of AAPL")
    world.decide(by_message["Buy 10 MSFT"]["id"], approve=True)
    messages = await wait_for_final(agent, alice, "Purchased 10 shares of MSFT")

    results = sorted(t.content for t in tool_messages(messages))
    assert results == ["Purchased 10 shares of MSFT at 25.0", "Purchased 5 shares of AAPL at 19.5"]
    assert world.orders() == orders_before + 2


async def kill(agent: Any) -> int:
    pid = await agent.process_id()
    os.kill(pid, signal.SIGKILL)
    return pid


def mark_crash(storage_dir: Path, thread_id: str, point: str) -> Path:
    marker = storage_dir / "crash-points" / f"{thread_id}.{point}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return marker


@pytest.mark.slow
@pytest.mark.parametrize("crash_point", ["after-request", "before-tool", "after-order", "before-result"])
async def test_crash_at_any_step_still_buys_exactly_once(
    chat_world: ChatWorld, storage_dir: Path, crash_point: str
) -> None:
    world = chat_world
    alice = world.token("alice")
    thread_id = new_thread_id()
    agent = get_agent(CrashableChat, thread_id, storage_dir=storage_dir)
    before = world.stats()["backchannel_requests"]
    orders_before = world.orders()

    await agent.send_message(alice, "Buy 4 shares of MSFT")
    (request,) = await wait_for_requests(world, "alice", 1)
    pid = await agent.process_id()
    if crash_point == "after-request":
        await kill(agent)  # (a) the CIBA request is out; the process dies before anything else
        world.decide(request["id"], approve=True)
    else:
        marker = mark_crash(storage_dir, thread_id, crash_point)  # (b), (c) or (d): die inside the resume
        world.decide(request["id"], approve=True)
        await eventually(lambda: not marker.exists(), timeout=20, what=f"crash at {crash_point}")

    messages = await wait_for_final(agent, alice, "Purchased 4 shares of MSFT", timeout=60)
    assert await agent.process_id() != pid, "the actor must really have been killed and restarted"
    assert world.orders() == orders_before + 1
    assert world.stats()["backchannel_requests"] == before + 1
    (tool,) = tool_messages(messages)
    assert tool.content == "Purchased 4 shares of MSFT at 25.0"


async def test_a_message_sent_again_with_its_id_is_stored_once_and_answered_once(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    first = await agent.send_message(alice, "what is MSFT trading at?", "m-1")
    again = await agent.send_message(alice, "what is MSFT trading at?", "m-1")
    assert [stable(m) for m in again] == [stable(m) for m in first]
    assert first[0].id == "m-1" and first[0].role == "user"
    history = await agent.get_messages(alice)
    assert [m.id for m in history if m.role == "user"] == ["m-1"]
    with pytest.raises(MessageIdReusedError):
        await agent.send_message(alice, "something else", "m-1")
    with pytest.raises(MessageIdReusedError):  # an id of one of the agent's own replies
        await agent.send_message(alice, "hello", first[-1].id)
    with pytest.raises(InvalidMessageError):
        await agent.send_message(alice, "hello", "no spaces allowed")
    assert len(await agent.get_messages(alice)) == len(history)


@pytest.mark.slow
async def test_a_turn_cut_short_by_a_crash_is_finished_by_resending_its_message(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    """The host dies right after storing the user's message (before the answer): a caller that resends with
    the same id (as the ingress does, `_idempotent`) gets the whole turn once, the message stored once."""
    alice = chat_world.token("alice")
    thread_id = new_thread_id()
    agent = get_agent(CrashableChat, thread_id, storage_dir=storage_dir)
    await agent.get_messages(alice)  # started, so the marker is read by this activation
    pid = await agent.process_id()
    marker = mark_crash(storage_dir, thread_id, "after-user-message")
    answer = await agent.invoke("send_message", alice, "what is NVDA trading at?", "m-crash", _idempotent=True)
    assert not marker.exists() and await agent.process_id() != pid, "the host must really have died mid-turn"
    assert [m.role for m in answer][:2] == ["user", "assistant"] and answer[0].id == "m-crash"
    history = await agent.get_messages(alice)
    assert [m.id for m in history if m.role == "user"] == ["m-crash"]
    assert sum(1 for m in history if m.role == "assistant" and m.content) == 1, history


async def test_only_the_owner_may_use_a_thread(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice, bob = world.token("alice"), world.token("bob")
    thread_id = new_thread_id()
    agent = get_agent(Chat, thread_id, storage_dir=storage_dir)
    assert (await agent.claim(alice))["created"] is True
    assert (await agent.claim(alice))["created"] is False
    await agent.send_message(alice, "What is MSFT trading at?")
    assert (await agent.describe(alice))["owner"] == world.subject("alice")

    from agents.errors import NotOwnerError

    calls = [
        lambda: agent.send_message(bob, "Buy 1 MSFT"),
        lambda: agent.get_messages(bob),
        lambda: agent.get_pending_approvals(bob),
        lambda: agent.submit_tool_result(bob, "call_x", True),
        lambda: agent.poll_events(bob, 0, None, 0.1),
        lambda: agent.describe(bob),
        lambda: agent.claim(bob),
    ]
    for call in calls:
        with pytest.raises(NotOwnerError) as caught:
            await call()
        assert "MSFT" not in str(caught.value)
    messages = await agent.get_messages(alice)
    assert [m.role for m in messages if m.role == "user"] == ["user"]
    assert world.requests_for("bob") == []


async def test_invalid_tokens_are_refused_before_the_agent_does_anything(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    from agents.errors import UnauthenticatedError
    from tests.bad_tokens import bad_tokens

    world = chat_world
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    for name, token in bad_tokens(world).items():
        with pytest.raises(UnauthenticatedError):
            await agent.send_message(token, "Buy 1 MSFT")
        with pytest.raises(UnauthenticatedError):
            await agent.get_messages(token)
        assert name  # each kind was tried
    for missing in (None, "", "   "):
        with pytest.raises(UnauthenticatedError):
            await agent.get_messages(missing)
    alice = world.token("alice")
    assert await agent.get_messages(alice) == []  # nothing was stored, and alice can still claim it
    assert (await agent.describe(alice))["owner"] is None  # a read claims nothing (only a turn does)
    assert (await agent.claim(alice))["created"] is True
    assert (await agent.describe(alice))["owner"] == world.subject("alice")


async def test_bad_input_gives_clear_errors_and_loses_nothing(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice = world.token("alice")
    agent = get_agent(ConfirmingChat, new_thread_id(), storage_dir=storage_dir)
    await agent.send_message(alice, "What is MSFT trading at?")
    before = await agent.get_messages(alice)

    for content in ("", "   ", "x" * 9000):
        with pytest.raises(InvalidMessageError):
            await agent.send_message(alice, content)
    with pytest.raises(InvalidMessageError):
        await agent.send_message(alice, {"not": "text"})
    with pytest.raises(UnknownToolCallError):
        await agent.submit_tool_result(alice, "call_does_not_exist", True)
    assert await agent.get_messages(alice) == before

    # In-chat confirmation: the price look-up waits for approve/deny, then continues; a second answer is refused.
    (pending,) = [m for m in before if m.role == "tool"]
    assert pending.state == "awaiting-confirmation"
    (approval,) = await agent.get_pending_approvals(alice)
    assert approval.kind == "confirmation"
    new = await agent.submit_tool_result(alice, pending.tool_call_id, True)
    assert "25.0" in final_text(new)
    with pytest.raises(ToolCallNotAwaitingError):
        await agent.submit_tool_result(alice, pending.tool_call_id, False)

    # Malformed arguments from the model become tool errors the model sees; nothing crashes.
    new = await agent.send_message(alice, "Buy 5 shares of XYZ")
    (tool,) = tool_messages(new)
    assert tool.state == "result" and tool.content.startswith("Error:") and "XYZ" in tool.content
    new = await agent.send_message(alice, "Buy 0 shares of MSFT")
    assert all(t.content.startswith("Error:") for t in tool_messages(new)) or not tool_messages(new)
    assert world.requests_for("alice") == []
    history = await agent.get_messages(alice)
    assert len([m for m in history if m.role == "user"]) == 3


async def test_a_watcher_with_an_old_epoch_is_answered_at_once(chat_world: ChatWorld, storage_dir: Path) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    await agent.send_message(alice, "What is MSFT trading at?")
    started = time.monotonic()
    answer = await agent.poll_events(alice, 10_000, "an-epoch-from-before-a-restart", 10.0)
    assert time.monotonic() - started < 2.0
    assert answer["epoch"] != "an-epoch-from-before-a-restart"
    assert any(event.type == "message" for event in answer["events"])


async def test_history_survives_a_full_ray_restart(chat_world: ChatWorld, storage_dir: Path) -> None:
    world = chat_world
    alice = world.token("alice")
    thread_id = new_thread_id()
    agent = get_agent(Chat, thread_id, storage_dir=storage_dir)
    await agent.send_message(alice, "What is AAPL trading at?")
    await agent.send_message(alice, "Buy 2 shares of AAPL")
    before = [stable(m) for m in await agent.get_messages(alice)]
    (request,) = await wait_for_requests(world, "alice", 1)

    ray.shutdown()
    ray.init(**ray_init_kwargs())
    runtime.init(storage_dir=storage_dir)
    again = get_agent(Chat, thread_id, storage_dir=storage_dir)
    after = [stable(m) for m in await again.get_messages(alice)]
    assert after[: len(before)] == before
    # The pending approval survived too: approving now completes the purchase.
    world.decide(request["id"], approve=True)
    await wait_for_final(again, alice, "Purchased 2 shares of AAPL")
