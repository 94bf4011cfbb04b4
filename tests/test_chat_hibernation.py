"""A thread waiting for an approval hibernates, and the purchase still completes by itself (issue 8, test 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import get_agent
from runtime.settings import runtime_settings
from tests.chat_agents_under_test import HibernatingChat
from tests.chat_world import ChatWorld
from tests.lifecycle import host_stats, wait_until_hibernated
from tests.test_chat_flow import new_thread_id, tool_messages, wait_for_final, wait_for_requests
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("chat_world")


async def test_a_sleeping_thread_with_a_pending_approval_buys_exactly_once_when_approved(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    world = chat_world
    alice = world.token("alice")
    thread_id = new_thread_id()
    name = f"HibernatingChat/{thread_id}"
    namespace = runtime_settings().namespace
    agent = get_agent(HibernatingChat, thread_id, storage_dir=storage_dir)
    requests_before = world.stats()["backchannel_requests"]
    orders_before = world.orders()

    new = await agent.send_message(alice, "Buy 6 shares of MSFT")
    assert [t.state for t in tool_messages(new)] == ["pending-authorization"]
    (request,) = await wait_for_requests(world, "alice", 1)
    await wait_until_hibernated(storage_dir, namespace, name, timeout=30)

    world.decide(request["id"], approve=True)
    # nobody calls the thread: the alarm scheduler wakes it for its next check, which finds the approval
    await eventually(lambda: world.orders() == orders_before + 1, timeout=30, what="the order to be placed")
    (stats,) = await host_stats(storage_dir, namespace)
    assert stats["hibernations"] >= 1 and stats["activations"] >= 2

    messages = await wait_for_final(agent, alice, "Purchased 6 shares of MSFT")
    (tool,) = tool_messages(messages)
    assert tool.state == "result" and tool.content == "Purchased 6 shares of MSFT at 25.0"
    assert world.orders() == orders_before + 1
    assert world.stats()["backchannel_requests"] == requests_before + 1
