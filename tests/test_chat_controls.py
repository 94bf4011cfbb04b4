"""The controls a chat needs, on the thread agent itself (real Ray, the offline model, the dev authorization
server): stopping an answer mid-stream, and what a message sent while the thread answers another does under
each overlap policy (`queue`, `reject`, `interrupt`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.chat import Chat
from agents.errors import NotOwnerError, TurnInProgressError
from runtime import get_agent
from tests.chat_agents_under_test import InterruptingChat, RejectingChat, SlowPricesChat
from tests.chat_world import ChatWorld
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
