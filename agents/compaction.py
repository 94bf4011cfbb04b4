"""Compaction: the model's own summary of the turns that no longer fit its context window.

The window (`agents.model_context`) keeps the newest turns that fit the budget; what falls out of it would
be forgotten by the model. So, once the part of the thread that is out of the window and not yet summarized
grows past `CHAT_COMPACT_AFTER_CHARS`, the agent schedules a compaction step (`AIChatAgent.compact_context`,
a durable schedule: it runs after the turn, never inside it, and a crash mid-way runs it again). A step asks
the model to fold the oldest unsummarized turns (as many as fit the budget) into the summary so far, and
stores the result as a summary row of the thread (`ThreadStore.add_summary`), covering the thread up to the
last message it read. Steps continue until the summary reaches the window.

Why this is safe to repeat: messages are append-only, a summary row is keyed by the last message it covers
and written only if it covers more than the newest one, and nothing else changes. A step that crashed before
writing is simply run again; one that crashed after writing finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agents.model_context import ContextBlock, ModelMessage

COMPACTION_INSTRUCTIONS = (
    "Summarize the conversation so far for the assistant who continues it. You get the summary written "
    "earlier (if any) and the next part of the conversation. Write one updated summary: what the user asked "
    "for and decided, what the assistant did and promised, every tool call's outcome (purchases made, "
    "denied or still pending, with amounts), and facts and preferences the user stated. Plain text, at most "
    "{max_chars} characters; no preamble."
)
COMPACTION_DELAY_SECONDS = 1.0
"""A compaction step runs this long after the turn that made it due (its own step, not the user's turn)."""
NEXT_STEP_DELAY_SECONDS = 1.0
"""Between two steps of a long backlog, so that the user's turns go between them."""


def transcript(blocks: Iterable[ContextBlock]) -> str:
    """The blocks as plain lines the model reads ("user: ...", "assistant called buy_stock({...})", ...)."""
    lines = []
    for block in blocks:
        names: dict[str, str] = {}
        for message in block.messages:
            lines.extend(_lines_of(message, names))
    return "\n".join(lines)


def _lines_of(message: ModelMessage, names: dict[str, str]) -> list[str]:
    role = message.get("role")
    lines = []
    if message.get("content"):
        label = f"result of {names.get(str(message.get('tool_call_id')), 'a tool')}" if role == "tool" else role
        lines.append(f"{label}: {message['content']}")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        names[str(call.get("id"))] = str(function.get("name"))
        lines.append(f"assistant called {function.get('name')}({function.get('arguments')})")
    return lines


def compaction_request(model: str, previous: str | None, blocks: list[ContextBlock], max_chars: int) -> dict[str, Any]:
    """The chat-completions request of one step: the instructions, the summary so far, the next part."""
    part = transcript(blocks)
    user = f"Summary so far:\n{previous or '(none yet)'}\n\nNext part of the conversation:\n{part}"
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": COMPACTION_INSTRUCTIONS.format(max_chars=max_chars)},
            {"role": "user", "content": user},
        ],
        "max_tokens": max(64, max_chars // 3),
    }


def request_overhead(previous: str | None) -> int:
    """The characters a step's request takes besides the part it folds (the budget less this is the part)."""
    return len(COMPACTION_INSTRUCTIONS) + len(previous or "") + 200


__all__ = [
    "COMPACTION_DELAY_SECONDS",
    "COMPACTION_INSTRUCTIONS",
    "NEXT_STEP_DELAY_SECONDS",
    "compaction_request",
    "request_overhead",
    "transcript",
]
