"""Approved means done, exactly once (issue 9): a checkout outage after approval is retried on a durable
schedule with the same Idempotency-Key; a permanent refusal ends the call and spends its credential."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agents.chat import Chat
from runtime import get_agent
from runtime.storage import AgentStorage
from tests.chat_world import ChatWorld
from tests.test_chat_flow import final_text, new_thread_id, tool_messages, wait_for_requests
from tests.waiting import eventually
from tools.ciba.agent_credential_store import AgentCredentialStore
from tools.ciba.confirmation import CREDENTIALS_NAMESPACE

pytestmark = pytest.mark.usefixtures("chat_world")


async def watch_until_result(agent: Any, token: str, seen: list[tuple[str, str | None]]) -> list[Any]:
    """Read the thread until its purchase has a result, noting every state the call was seen in."""

    async def resolved() -> list[Any] | None:
        messages = await agent.get_messages(token)
        (tool,) = tool_messages(messages)
        seen.append((tool.state, tool.content))
        return messages if tool.state == "result" and "approve" not in final_text(messages).lower() else None

    return await eventually(resolved, timeout=60, interval=0.05, what="the purchase's result")


async def test_a_checkout_outage_after_approval_is_retried_until_the_order_is_placed(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    world = chat_world
    alice = world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    orders_before, requests_before = world.orders(), world.stats()["backchannel_requests"]
    await agent.send_message(alice, "Buy 2 shares of MSFT")
    (request,) = await wait_for_requests(world, "alice", 1)

    world.checkout.fail_next(503, 5)  # more than one run's quick retries: the durable retry must take over
    world.decide(request["id"], approve=True)
    seen: list[tuple[str, str | None]] = []
    messages = await watch_until_result(agent, alice, seen)

    (tool,) = tool_messages(messages)
    assert tool.content == "Purchased 2 shares of MSFT at 25.0"
    assert "running" in [state for state, _ in seen]  # seen waiting for its retry ...
    assert [content for state, content in seen if state == "result"] == [tool.content] * len(
        [s for s, _ in seen if s == "result"]
    )  # ... and never as a failed result
    assert "Purchased 2 shares of MSFT" in final_text(messages)
    assert world.orders() == orders_before + 1
    assert world.stats()["backchannel_requests"] == requests_before + 1


async def test_a_permanent_checkout_refusal_ends_the_call_and_spends_the_credential(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    world = chat_world
    alice = world.token("alice")
    thread_id = new_thread_id()
    agent = get_agent(Chat, thread_id, storage_dir=storage_dir)
    orders_before = world.orders()
    await agent.send_message(alice, "Buy 3 shares of AAPL")
    (request,) = await wait_for_requests(world, "alice", 1)

    world.checkout.fail_next(400, 1)
    world.decide(request["id"], approve=True)
    messages = await watch_until_result(agent, alice, [])

    (tool,) = tool_messages(messages)
    assert tool.content.startswith("Error: buy_stock failed: the checkout API rejected the order (400")
    assert world.orders() == orders_before
    storage = await AgentStorage(Chat.storage_path(storage_dir, thread_id)).open()  # the thread's own file
    try:
        store = AgentCredentialStore(storage, SecretStr(world.env["AUTH0_SESSION_ENCRYPTION_KEY"]))
        left = await store.get(CREDENTIALS_NAMESPACE, f"{thread_id}:buy_stock:{tool.tool_call_id}")
    finally:
        await storage.close()
    assert left is not None and left["done"] is True and "credentials" not in left  # the token is gone


@pytest.mark.parametrize("lost_answer", [504, None], ids=["gateway-504", "timeout"])
async def test_an_order_whose_answer_was_lost_is_never_reported_failed_and_is_found_by_its_key(
    chat_world: ChatWorld, storage_dir: Path, lost_answer: int | None
) -> None:
    """Review hole 2: the checkout places the order and the answer is lost (a gateway's 504, or held past
    the client's timeout), then the checkout stays down for longer than the agent's retries. The call must
    stay "outcome unknown" (never an error that invites the user to buy again), and once the checkout is
    back the order is found by its Idempotency-Key: one order, reported as bought."""
    from tests.chat_agents_under_test import ImpatientChat

    world = chat_world
    alice = world.token("alice")
    agent = get_agent(ImpatientChat, new_thread_id(), storage_dir=storage_dir)
    orders_before = world.orders()
    await agent.send_message(alice, "Buy 4 shares of MSFT")
    (request,) = await wait_for_requests(world, "alice", 1)
    world.checkout.lose_next_answers(1, lost_answer)
    world.checkout.fail_next(503, 40)  # down for every quick retry and look-up of 4+ durable runs
    world.decide(request["id"], approve=True)

    async def unknown_past_the_retry_limit() -> Any:
        messages = await agent.get_messages(alice)
        (tool,) = tool_messages(messages)
        assert tool.state != "result", tool.content  # an error here would invite a second order
        (call,) = [c for m in messages for c in (m.tool_calls or [])]
        retry = call.retry
        return retry is not None and retry.outcome_unknown and retry.attempt > ImpatientChat.tool_retry_limit

    await eventually(unknown_past_the_retry_limit, timeout=90, interval=0.2, what="unknown past the retry limit")
    assert world.orders() == orders_before + 1  # placed once, though nobody was told
    world.checkout.recover()
    seen: list[tuple[str, str | None]] = []
    messages = await watch_until_result(agent, alice, seen)
    (tool,) = tool_messages(messages)
    assert tool.content == "Purchased 4 shares of MSFT at 25.0"
    assert world.orders() == orders_before + 1
