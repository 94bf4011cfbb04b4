"""Review hole 8: an approval check that keeps failing is never parked while the user may still decide.
Real Ray, the dev authorization server, the checkout API and the offline model; the failing checks are a
test agent's (see `FlakyCheckChat`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import get_agent
from tests.chat_agents_under_test import FlakyCheckChat, NeverCheckingChat
from tests.chat_world import ChatWorld
from tests.test_chat_flow import final_text, tool_messages, wait_for_final, wait_for_requests
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("chat_world")


@pytest.fixture
def no_requests_left(chat_world: ChatWorld) -> Iterator[None]:
    """Deny what a test left pending on alice's phone: the next tests expect hers to hold only theirs."""
    yield
    for request in chat_world.requests_for("alice"):
        chat_world.decide(request["id"], approve=False)


async def test_checks_that_fail_past_the_retry_limit_still_complete_the_approval(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(FlakyCheckChat, f"flaky-{uuid.uuid4().hex[:8]}", storage_dir=storage_dir)
    orders = chat_world.orders()
    (tool,) = tool_messages(await agent.send_message(alice, "buy 2 MSFT"))
    assert tool.state == "pending-authorization"
    (request,) = await wait_for_requests(chat_world, "alice", 1)
    chat_world.decide(request["id"], approve=True)
    # six failed checks, three more than `schedule_max_retries`: a parked check would never come back
    await wait_for_final(agent, alice, "Purchased 2 shares of MSFT", timeout=60)
    assert chat_world.orders() == orders + 1
    assert await agent.get_schedules(status="failed") == []


@pytest.mark.usefixtures("no_requests_left")
async def test_checks_that_never_work_end_the_call_clearly_once_the_request_expired(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(NeverCheckingChat, f"broken-{uuid.uuid4().hex[:8]}", storage_dir=storage_dir)
    (tool,) = tool_messages(await agent.send_message(alice, "buy 3 MSFT"))
    assert tool.state == "pending-authorization"

    async def ended() -> str | None:
        messages = await agent.get_messages(alice)
        (call,) = tool_messages(messages)
        return call.content if call.state == "result" else None

    result = await eventually(ended, timeout=60, interval=0.2, what="the call ended")
    assert "could not be checked before the request expired" in result
    assert await agent.get_pending_approvals(alice) == []
    assert await agent.get_schedules(status="failed") == []
    assert final_text(await agent.get_messages(alice))


@pytest.mark.usefixtures("no_requests_left")
async def test_one_answer_cannot_fan_out_into_unbounded_calls_or_pushes(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    """Review hole 6: one message that makes the model call `buy_stock` four times runs three of them (the
    fourth is answered "not run"), and of those only two reach the user's device (the third is answered
    "not sent": two approvals of the thread are already waiting). The model reads why in each result."""
    from tests.chat_agents_under_test import LimitedChat

    alice = chat_world.token("alice")
    before = chat_world.stats()["backchannel_requests"]
    agent = get_agent(LimitedChat, f"limited-{uuid.uuid4().hex[:8]}", storage_dir=storage_dir)
    new = await agent.send_message(alice, "buy 1 MSFT, 1 AAPL, 1 NVDA and 1 GOOGL")
    states = [(m.state, m.content or "") for m in tool_messages(new)]
    assert [s for s, _ in states] == ["pending-authorization", "pending-authorization", "result", "result"]
    assert states[2][1].startswith("Not sent: 2 approvals") and states[3][1].startswith("Not run: at most 3")
    assert len(await agent.get_pending_approvals(alice)) == 2
    assert chat_world.stats()["backchannel_requests"] == before + 2


@pytest.mark.usefixtures("no_requests_left")
async def test_a_user_cannot_have_more_approvals_waiting_than_the_cap_across_threads(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    """Review hole 6: the per-user cap counts every thread of the user; an approval that ends (here denied)
    gives its place back."""
    from tests.chat_agents_under_test import LimitedChat

    alice = chat_world.token("alice")
    first = get_agent(LimitedChat, f"user-cap-a-{uuid.uuid4().hex[:6]}", storage_dir=storage_dir)
    second = get_agent(LimitedChat, f"user-cap-b-{uuid.uuid4().hex[:6]}", storage_dir=storage_dir)
    states = [m.state for m in tool_messages(await first.send_message(alice, "buy 1 MSFT and 1 AAPL"))]
    assert states == ["pending-authorization", "pending-authorization"]
    new = tool_messages(await second.send_message(alice, "buy 1 NVDA and 1 GOOGL"))
    assert [m.state for m in new] == ["pending-authorization", "result"]
    assert (new[1].content or "").startswith("Not sent: 3 approvals of this user")
    assert len(chat_world.requests_for("alice")) == 3

    denied = next(r for r in chat_world.requests_for("alice") if r["binding_message"] == "Buy 1 MSFT")
    chat_world.decide(denied["id"], approve=False)
    await wait_for_final(first, alice, "denied", timeout=30)
    again = tool_messages(await second.send_message(alice, "buy 1 AMZN"))
    assert again[-1].state == "pending-authorization"
