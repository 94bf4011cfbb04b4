"""The controls a chat needs, on the thread agent itself (real Ray, the offline model, the dev authorization
server): stopping an answer mid-stream, and what a message sent while the thread answers another does under
each overlap policy (`queue`, `reject`, `interrupt`)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.chat import Chat
from agents.directory import directory_id_for
from agents.errors import NotOwnerError, ToolCallNotPendingError, TurnInProgressError, UnknownToolCallError
from agents.resumer import CHECK_CALLBACK, WITHDRAWN_TEXT
from runtime import AgentNotFoundError, get_agent
from tests.chat_agents_under_test import (
    CheckableChat,
    InterruptingChat,
    RejectingChat,
    ShortRetentionChat,
    ShortRetentionDirectory,
    SlowPricesChat,
)
from tests.chat_world import ChatWorld, deny_left_on_the_phone
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("chat_world")

COUNT = "count slowly to 300"
"""The offline model's slow answer: "1 2 3 ... 300.", a word every 0.2 s (a minute in all)."""


def new_thread_id() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def tokens_streamed(agent: Any, token: str, at_least: int, after_message: str | None = None) -> list[Any]:
    """Wait until the answer under way (the one to `after_message`, if given) streamed `at_least` words."""

    async def streamed() -> list[Any] | None:
        events = (await agent.poll_events(token, 0, None, 0.0))["events"]
        if after_message is not None:
            asked = [i for i, e in enumerate(events) if (e.data.get("message") or {}).get("content") == after_message]
            events = events[asked[-1] :] if asked else []
        tokens = [e for e in events if e.type == "token"]
        return tokens if len(tokens) >= at_least else None

    return await eventually(streamed, timeout=30, what=f"{at_least} streamed tokens")


def due_alarms(storage_dir: Path, thread_id: str) -> list[float]:
    """The thread's due times in the root's alarm index, read from its file (what wakes a sleeping thread)."""
    index = storage_dir / "_runtime" / "alarm_index.sqlite3"
    if not index.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT next_due FROM alarm_index WHERE agent_id = ?", (thread_id,))]


def answers(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.role == "assistant"]


async def test_stop_keeps_the_words_so_far_and_the_thread_goes_on(chat_world: ChatWorld, storage_dir: Path) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    assert await agent.stop(alice) is False  # nothing to stop
    started = time.monotonic()
    turn = asyncio.ensure_future(agent.send_message(alice, COUNT))
    await tokens_streamed(agent, alice, 4)
    assert await agent.stop(alice) is True
    (stopped,) = answers(await asyncio.wait_for(turn, 20))
    assert time.monotonic() - started < 30  # not the minute the whole answer takes
    assert stopped.metadata.get("stopped") is True
    assert stopped.content.startswith("1 2 3") and not stopped.content.endswith("300.")

    later = await agent.send_message(alice, "what is AAPL trading at?")
    assert "AAPL is trading at" in answers(later)[-1].content
    stored = await agent.get_messages(alice)
    assert [m.content for m in stored if m.role == "assistant" and m.metadata.get("stopped")] == [stopped.content]


async def test_stop_lets_the_running_tool_finish_and_runs_no_other(chat_world: ChatWorld, storage_dir: Path) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(SlowPricesChat, new_thread_id(), storage_dir=storage_dir)
    turn = asyncio.ensure_future(agent.send_message(alice, "what are AAPL and MSFT trading at?"))

    async def first_call_running() -> bool:
        events = (await agent.poll_events(alice, 0, None, 0.0))["events"]
        return any(e.type == "tool_call" and e.data.get("state") == "running" for e in events)

    await eventually(first_call_running, timeout=30, what="the first price look-up running")
    assert await agent.stop(alice) is True
    messages = await asyncio.wait_for(turn, 20)
    results = [m.content for m in messages if m.role == "tool"]
    assert results[0].startswith("AAPL is trading at")  # it was running: it finished, and is recorded
    assert results[1].startswith("Not run: the user stopped")
    assert messages[-1].role == "tool"  # and the model was not asked again


async def test_messages_queue_by_default(chat_world: ChatWorld, storage_dir: Path) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(Chat, new_thread_id(), storage_dir=storage_dir)
    first = asyncio.ensure_future(agent.send_message(alice, "count slowly to 15"))
    await tokens_streamed(agent, alice, 2)
    second = await agent.send_message(alice, "what is AAPL trading at?")
    assert "AAPL is trading at" in answers(second)[-1].content
    assert first.done() and answers(first.result())[-1].content.endswith("15.")  # it ran to its end, first


async def test_reject_refuses_a_message_while_answering_but_not_while_an_approval_waits(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(RejectingChat, new_thread_id(), storage_dir=storage_dir)
    first = asyncio.ensure_future(agent.send_message(alice, "count slowly to 15"))
    await tokens_streamed(agent, alice, 2)
    with pytest.raises(TurnInProgressError):
        await agent.send_message(alice, "what is AAPL trading at?")
    assert answers(await first)[-1].content.endswith("15.")  # the answer under way was not disturbed

    waiting = await agent.send_message(alice, "buy 2 shares of IBM")
    assert [m.state for m in waiting if m.role == "tool"] == ["pending-authorization"]
    meanwhile = await agent.send_message(alice, "what is AAPL trading at?")  # the approval waits: not a turn
    assert "AAPL is trading at" in answers(meanwhile)[-1].content
    stored = await agent.get_messages(alice)
    assert [m.content for m in stored if m.role == "user"].count("what is AAPL trading at?") == 1
    assert deny_left_on_the_phone(chat_world, "Buy 2 IBM") == 1


async def test_interrupt_stops_the_answer_under_way_then_answers_the_new_message(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    alice = chat_world.token("alice")
    agent = get_agent(InterruptingChat, new_thread_id(), storage_dir=storage_dir)
    first = asyncio.ensure_future(agent.send_message(alice, COUNT))
    await tokens_streamed(agent, alice, 3)
    second = await asyncio.wait_for(agent.send_message(alice, "what is AAPL trading at?"), 30)
    assert "AAPL is trading at" in answers(second)[-1].content
    (stopped,) = answers(await first)
    assert stopped.metadata.get("stopped") is True and not stopped.content.endswith("300.")

    third = asyncio.ensure_future(agent.send_message(alice, "count slowly to 12"))
    await tokens_streamed(agent, alice, 2, after_message="count slowly to 12")
    with pytest.raises(NotOwnerError):  # a stranger's message is refused, and stops nothing
        await agent.send_message(chat_world.token("bob"), "hello")
    assert answers(await third)[-1].content.endswith("12.")


async def test_a_withdrawn_approval_buys_nothing_when_approved_later(chat_world: ChatWorld, storage_dir: Path) -> None:
    """Withdrawn, then approved on the phone (the request is still there: CIBA cannot take it back): the call
    ends "cancelled by the user", its checks stop, no order is placed; a second withdraw is a 409."""
    alice, orders_before = chat_world.token("alice"), chat_world.orders()
    agent = get_agent(CheckableChat, new_thread_id(), storage_dir=storage_dir)
    (call,) = [m for m in await agent.send_message(alice, "buy 4 shares of ORCL") if m.role == "tool"]
    (request,) = await eventually(
        lambda: [r for r in chat_world.requests_for("alice") if r["binding_message"] == "Buy 4 ORCL"],
        what="the purchase's request on alice's phone",
    )
    with pytest.raises(NotOwnerError):
        await agent.withdraw_approval(chat_world.token("bob"), call.tool_call_id)
    with pytest.raises(UnknownToolCallError):
        await agent.withdraw_approval(alice, "call_nope")

    answered = await agent.withdraw_approval(alice, call.tool_call_id)
    assert answered and answered[-1].role == "assistant"
    assert await agent.get_pending_approvals(alice) == []
    assert not [s for s in await agent.get_schedules(status="pending") if s.callback == CHECK_CALLBACK]

    chat_world.decide(request["id"], approve=True)
    with pytest.raises(ToolCallNotPendingError):
        await agent.withdraw_approval(alice, call.tool_call_id)
    await agent.check_now(call.tool_call_id)  # a late check (or a ping) of that call: a no-op
    (result,) = [m for m in await agent.get_messages(alice) if m.role == "tool"]
    assert result.state == "result" and result.content == WITHDRAWN_TEXT
    assert chat_world.orders() == orders_before


async def test_delete_erases_the_thread_and_its_alarm_and_nothing_else(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    """A thread with a purchase waiting on the phone is deleted: its file and its alarm are gone from disk,
    approving the request afterwards buys nothing, its id is unknown (and can start a new thread), and
    another thread of the same user is untouched."""
    alice, orders_before = chat_world.token("alice"), chat_world.orders()
    thread_id, other_id = new_thread_id(), new_thread_id()
    agent, other = (
        get_agent(Chat, thread_id, storage_dir=storage_dir),
        get_agent(Chat, other_id, storage_dir=storage_dir),
    )
    await other.send_message(alice, "what is AAPL trading at?")
    await agent.send_message(alice, "buy 6 shares of META")
    (request,) = await eventually(
        lambda: [r for r in chat_world.requests_for("alice") if r["binding_message"] == "Buy 6 META"],
        what="the purchase's request on alice's phone",
    )
    files = lambda: sorted(p.name for p in (storage_dir / "Chat").glob(f"{thread_id}.sqlite3*"))  # noqa: E731
    assert files()
    await eventually(lambda: due_alarms(storage_dir, thread_id), what="the thread's alarm (its approval check)")

    with pytest.raises(NotOwnerError):
        await agent.delete_thread(chat_world.token("bob"))
    await agent.delete_thread(alice)
    await eventually(lambda: not files(), what="the thread's files gone")
    await eventually(lambda: due_alarms(storage_dir, thread_id) == [], what="the thread's alarm gone")
    with pytest.raises(AgentNotFoundError):
        await get_agent(Chat, thread_id, storage_dir=storage_dir, create=False).get_messages(alice)

    chat_world.decide(request["id"], approve=True)
    await asyncio.sleep(2.5)  # two of the dev server's poll intervals: no check is left to notice it
    assert chat_world.orders() == orders_before
    assert [m.role for m in await other.get_messages(alice)] == ["user", "assistant", "tool", "assistant"]

    again = get_agent(Chat, thread_id, storage_dir=storage_dir)
    assert await again.get_messages(alice) == []  # a new, empty thread under the old id


async def test_an_idle_thread_is_deleted_after_its_retention_and_an_active_one_is_not(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    """Retention 3 s: a thread written to again before its first due time is looked at then and kept (the
    next look moves to 3 s after its newest message); once idle that long, it is deleted, a purchase waiting
    in it withdrawn (approving it afterwards buys nothing)."""
    alice, orders_before = chat_world.token("alice"), chat_world.orders()
    thread_id = new_thread_id()
    agent = get_agent(ShortRetentionChat, thread_id, storage_dir=storage_dir)
    await agent.send_message(alice, "what is AAPL trading at?")
    (first,) = [s for s in await agent.get_schedules(status="pending") if s.callback == "expire_if_idle"]
    await agent.send_message(alice, "buy 5 shares of TSLA")  # activity: the first look must keep the thread

    async def looked_again() -> bool:
        pending = [s for s in await agent.get_schedules(status="pending") if s.callback == "expire_if_idle"]
        return bool(pending) and pending[0].due_at > first.due_at

    await eventually(looked_again, timeout=30, what="the first look, rescheduled past it")
    assert len(await agent.get_messages(alice)) >= 4  # kept

    files = lambda: list((storage_dir / "ShortRetentionChat").glob(f"{thread_id}.sqlite3*"))  # noqa: E731
    await eventually(lambda: not files(), timeout=30, what="the idle thread deleted")
    (request,) = [r for r in chat_world.requests_for("alice") if r["binding_message"] == "Buy 5 TSLA"]
    chat_world.decide(request["id"], approve=True)
    await asyncio.sleep(2.5)  # two poll intervals of the dev server: nothing is left to notice the approval
    assert chat_world.orders() == orders_before


async def test_the_thread_list_forgets_entries_idle_past_the_retention(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    alice = chat_world.token("alice")
    directory = get_agent(
        ShortRetentionDirectory, directory_id_for(chat_world.subject("alice")), storage_dir=storage_dir
    )
    await directory.add(alice, "kept-busy")
    await directory.add(alice, "left-idle")

    async def only_the_busy_one() -> bool:
        await directory.touch(alice, "kept-busy")
        return [t["thread_id"] for t in await directory.list_threads(alice)] == ["kept-busy"]

    await eventually(only_the_busy_one, timeout=30, interval=0.5, what="the idle entry forgotten")
