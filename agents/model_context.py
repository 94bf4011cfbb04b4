"""The thread as the model reads it: a bounded window of OpenAI chat messages built from the stored ones.

What one model call receives is bounded by a budget in characters of the request's JSON
(`CHAT_CONTEXT_BUDGET_CHARS`; characters, not tokens, because counting tokens needs the model's own
tokenizer files, which a tokenizer library downloads on first use, and nothing here may fetch data at run
time; about 3 to 4 characters make a token in English). Inside the budget, in this order:

1. the system prompt;
2. the thread's summary, if one was written (`agents.compaction`): what the model must know of the turns
   that no longer fit;
3. a note naming the tool calls that still wait (for an approval, a confirmation, a retry) but whose own
   turn no longer fits, so the model never asks for them again;
4. the newest turns that fit, oldest first. The thread is cut into **blocks** that are kept whole: a
   message, with (for an assistant message) every tool call it made and each call's result right after it,
   and the calls that resolved after the thread moved on, replayed where they resolved (an assistant tool
   call plus its result), so the model reads an outcome at the point in time it arrived. A window starts
   at a block's first message, so a tool result is never without its call. The newest block is always
   sent, whatever its size.

Older turns are not lost: they stay in the thread (the API shows every message); only the model's view is
bounded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agents.messages import ToolCall

PENDING_RESULT_TEXT = (
    "Pending: waiting for the user's approval on their device. The result will follow; do not call this tool again."
)
AWAITING_CONFIRMATION_TEXT = "Pending: waiting for the user to confirm or deny this action in the chat."
OUTCOME_UNKNOWN_TEXT = (
    "Outcome not known yet: the request was sent but its answer was lost, and it is being looked up. It may "
    "already have taken effect: do not call this tool again for it, and tell the user the result will follow."
)
RETRYING_TEXT = (
    "Pending: the service is unavailable for a moment; this call is retried by itself. The result will follow."
)
SUMMARY_PREFIX = "Summary of the earlier part of this conversation (older messages are not shown):\n"
STILL_PENDING_PREFIX = "Tool calls from earlier in this conversation that are still pending (do not call them again):"

ModelMessage = dict[str, Any]
"""One message of a chat-completions request, in the wire form the model endpoint takes."""

HistoryRow = tuple[int, str, str, str | None]
"""A stored message as the context is built from it: (seq, id, role, content)."""


def encoded(messages: Iterable[ModelMessage]) -> list[str]:
    """Each message as the JSON text the request carries (encoded once: a block keeps its text)."""
    return [json.dumps(message, ensure_ascii=False) for message in messages]


def wire_size(messages: Iterable[ModelMessage]) -> int:
    """The characters `messages` take in the request's JSON (what the budget counts), the separator after
    each included: never less than their list's `json.dumps`, so sizes of parts add up safely."""
    return sum(len(text) + 2 for text in encoded(messages))


@dataclass(frozen=True)
class ContextBlock:
    """The messages of one stored message that the model must read together (see the module docstring),
    with their JSON text, built once."""

    seq: int
    messages: tuple[ModelMessage, ...]
    texts: tuple[str, ...]

    @functools.cached_property
    def size(self) -> int:
        """The characters the block takes in a request (counted once: a turn asks for it of every block
        in its window, and long threads keep their blocks between turns)."""
        return sum(len(text) + 2 for text in self.texts)

    @classmethod
    def of(cls, seq: int, messages: list[ModelMessage]) -> ContextBlock:
        return cls(seq, tuple(messages), tuple(encoded(messages)))


def thread_blocks(history: Iterable[HistoryRow], calls: Iterable[ToolCall]) -> list[ContextBlock]:
    """`history` (in any order) with its messages' own tool calls and the calls that resolved late at one
    of its seqs, as blocks in seq order."""
    calls_by_message: dict[str, list[ToolCall]] = {}
    late_by_seq: dict[int, list[ToolCall]] = {}
    for call in calls:
        calls_by_message.setdefault(call.message_id, []).append(call)
        if call.state == "result" and call.resolved_after_seq is not None:
            late_by_seq.setdefault(call.resolved_after_seq, []).append(call)
    blocks = []
    for seq, message_id, role, content in sorted(history):
        messages: list[ModelMessage] = []
        own_calls = sorted(calls_by_message.get(message_id, []), key=lambda c: c.position)
        if role == "assistant" and own_calls:
            messages.append(
                {"role": "assistant", "content": content, "tool_calls": [call.openai_call() for call in own_calls]}
            )
            messages.extend({"role": "tool", "tool_call_id": call.id, "content": as_seen(call)} for call in own_calls)
        else:
            messages.append({"role": role, "content": content or ""})
        for call in sorted(late_by_seq.get(seq, []), key=lambda c: (c.updated_at, c.id)):
            replay = call.openai_call() | {"id": f"{call.id}.resumed"}
            messages.append({"role": "assistant", "content": None, "tool_calls": [replay]})
            messages.append({"role": "tool", "tool_call_id": replay["id"], "content": call.result or ""})
        blocks.append(ContextBlock.of(seq, messages))
    return blocks


@dataclass
class ModelContext:
    """One request's messages, and which part of the thread they cover."""

    messages: list[ModelMessage]
    first_seq: int | None
    """The oldest stored message in the window (None: the thread has none)."""
    size: int
    blocks: list[ContextBlock] = field(default_factory=list)
    wire: str = ""
    """`messages` as the JSON array the request carries, assembled from the blocks' texts."""


def preamble(system_prompt: str, summary: str | None, still_pending: Iterable[ToolCall]) -> list[ModelMessage]:
    """What precedes the window: the system prompt, the summary, the note on calls still pending."""
    messages: list[ModelMessage] = [{"role": "system", "content": system_prompt}]
    if summary:
        messages.append({"role": "system", "content": SUMMARY_PREFIX + summary})
    lines = [f"- {call.name}({call.arguments}) [id {call.id}]: {as_seen(call)}" for call in still_pending]
    if lines:
        messages.append({"role": "system", "content": "\n".join([STILL_PENDING_PREFIX, *lines])})
    return messages


def bounded_context(
    head: list[ModelMessage], newest_first: Iterable[ContextBlock], budget: int, *, reserved: int = 0
) -> ModelContext:
    """`head` then the newest blocks that fit in `budget` characters (less `reserved`: the tools' schemas),
    oldest first. The newest block is taken whatever its size; the first that does not fit ends the window,
    so the window has no gaps."""
    used = wire_size(head) + reserved
    taken: list[ContextBlock] = []
    for block in newest_first:
        if taken and used + block.size > budget:
            break
        taken.append(block)
        used += block.size
    taken.reverse()
    messages, texts = list(head), encoded(head)
    for block in taken:
        messages.extend(block.messages)
        texts.extend(block.texts)
    return ModelContext(messages, taken[0].seq if taken else None, used, taken, "[" + ",".join(texts) + "]")


def as_seen(call: ToolCall) -> str:
    """What the model saw as this call's result in its original place."""
    if call.state == "result" and call.resolved_after_seq is None:
        return call.result or ""
    if call.state == "awaiting-confirmation":
        return AWAITING_CONFIRMATION_TEXT
    if call.state == "running" and call.retry is not None:
        return OUTCOME_UNKNOWN_TEXT if call.retry.outcome_unknown else RETRYING_TEXT
    return PENDING_RESULT_TEXT


__all__ = [
    "AWAITING_CONFIRMATION_TEXT",
    "OUTCOME_UNKNOWN_TEXT",
    "PENDING_RESULT_TEXT",
    "RETRYING_TEXT",
    "ContextBlock",
    "ModelContext",
    "ModelMessage",
    "as_seen",
    "bounded_context",
    "encoded",
    "preamble",
    "thread_blocks",
    "wire_size",
]
