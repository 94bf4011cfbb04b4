"""A long thread keeps working with a model whose context window is small (issue 23): the model is sent a
bounded window (the newest turns, every tool call with its result, the calls still pending, the summary),
a compaction step folds what falls out of the window into a summary on its own schedule, and the thread
itself keeps every message.

Real Ray, real SQLite files, the offline model over HTTP refusing any request longer than its context
window (`context_length_exceeded`, as a real model does). The history is written through the thread's
storage (`LongThreadChat.write_history`): thousands of turns through the model would take minutes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.chat import Chat
from agents.model_context import STILL_PENDING_PREFIX, SUMMARY_PREFIX, wire_size
from runtime import get_agent
from tests.chat_agents_under_test import LongThreadChat
from tests.chat_world import ChatWorld
from tests.test_chat_flow import final_text, mark_crash
from tests.test_runtime_identity_storage import RESTARTING
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("chat_world")

MODEL_WINDOW_CHARS = 8_000
"""The offline model's context window in these tests (`LongThreadChat`'s budget is 6,000)."""


@pytest.fixture
def small_model(chat_world: ChatWorld) -> Iterator[dict[str, Any]]:
    """The session's offline model with an 8,000-character context window; its stats, reset."""
    state = chat_world.model.app.state
    state.context_chars, state.stats["largest_request_chars"] = MODEL_WINDOW_CHARS, 0
    try:
        yield state.stats
    finally:
        state.context_chars = None


def paired(messages: list[dict[str, Any]]) -> bool:
    """Every tool result follows the call it answers, and every call is answered (OpenAI's rule)."""
    waiting: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            if message["tool_call_id"] not in waiting:
                return False
            waiting.discard(message["tool_call_id"])
        elif waiting:
            return False
        elif message["role"] == "assistant":
            waiting = {call["id"] for call in message.get("tool_calls") or []}
    return not waiting


@pytest.mark.slow
async def test_a_thread_of_5000_messages_answers_within_the_models_window(
    chat_world: ChatWorld, storage_dir: Path, small_model: dict[str, Any]
) -> None:
    alice = chat_world.token("alice")
    thread = get_agent(LongThreadChat, f"long-{uuid.uuid4().hex[:8]}", storage_dir=storage_dir)
    await thread.send_message(alice, "hello")  # the thread is alice's
    last_seq = await thread.write_history(2_400)
    assert last_seq > 5_000

    new = await thread.send_message(alice, "What is AAPL trading at?")
    assert "AAPL" in final_text(new) and "unavailable" not in final_text(new), final_text(new)
    assert 0 < small_model["largest_request_chars"] <= LongThreadChat.context_budget_chars

    window = await thread.model_window()
    assert wire_size(window) <= LongThreadChat.context_budget_chars
    assert paired(window)
    notes = [m["content"] for m in window if m["role"] == "system" and m["content"].startswith(STILL_PENDING_PREFIX)]
    assert len(notes) == 1 and "call_early_buy" in notes[0]  # the purchase from the start still waits
    everything = [m for m in await thread.get_messages(alice) if m.role != "tool"]
    assert len(everything) >= last_seq + 2 and everything[0].content == "hello"  # nothing of the thread is lost


async def test_without_a_window_the_same_thread_overflows_the_model(
    chat_world: ChatWorld, storage_dir: Path, small_model: dict[str, Any]
) -> None:
    """The failure the window prevents: a budget larger than the model's window, and every turn errors."""
    alice = chat_world.token("alice")
    thread = get_agent(Chat, f"overflow-{uuid.uuid4().hex[:8]}", storage_dir=storage_dir)
    for n in range(30):
        await thread.send_message(alice, f"question {n}: what is MSFT trading at today? " + "x" * 200)
    new = await thread.send_message(alice, "What is AAPL trading at?")
    assert "unavailable" in final_text(new)


async def test_compaction_summarizes_what_left_the_window_once_even_across_a_crash(
    chat_world: ChatWorld, storage_dir: Path, small_model: dict[str, Any]
) -> None:
    alice = chat_world.token("alice")
    thread_id = f"compact-{uuid.uuid4().hex[:8]}"
    thread = get_agent(LongThreadChat, thread_id, storage_dir=storage_dir)
    await thread.send_message(alice, "hello")
    await thread.write_history(120, pending_first=False)
    marker = mark_crash(storage_dir, thread_id, "before-summary")
    pid = await thread.process_id()

    await thread.send_message(alice, "What is MSFT trading at?")  # the turn schedules the step; it dies
    await eventually(thread.summaries, timeout=60, interval=0.2, what="a summary", ignore=RESTARTING)
    assert await thread.process_id() != pid, "the compaction step must really have died before writing"
    assert not marker.exists()

    window = await thread.model_window()
    assert not any("question 0:" in (m["content"] or "") for m in window)  # the start is out of the window
    summary_notes = [m for m in window if m["role"] == "system" and m["content"].startswith(SUMMARY_PREFIX)]
    assert len(summary_notes) == 1 and "MSFT" in summary_notes[0]["content"]
    assert paired(window) and wire_size(window) <= LongThreadChat.context_budget_chars

    await eventually(lambda: _caught_up(thread), timeout=60, interval=0.5, what="compaction caught up")
    before = await thread.summaries()
    assert await thread.compact_now() is False  # nothing left to fold: running it again writes nothing
    assert await thread.summaries() == before
    throughs = [through for through, _ in before]
    assert throughs == sorted(set(throughs))  # one summary per step, each covering more


async def _caught_up(thread: Any) -> bool:
    """The summary reaches the window: no compaction step is scheduled any more."""
    return not any(s.callback == "compact_context" for s in await thread.get_schedules(status="pending"))
