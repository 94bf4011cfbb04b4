"""The thread as the model reads it: OpenAI chat messages built from the stored messages and tool calls.

Each tool call is answered right after the assistant message that made it, with its result if it was
known then, or a "pending" note. A call resolved later (after the assistant or the user spoke again) is
also replayed where it resolved, as an assistant tool call plus its result, so the model reads the
outcome at the point in time it arrived and can report it.
"""

from __future__ import annotations

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


def model_context(
    system_prompt: str, history: list[tuple[int, str, str, str | None]], calls: list[ToolCall]
) -> list[dict[str, Any]]:
    """`history` (seq, id, role, content per message, in order) and every tool call, as chat messages."""
    context: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    calls_by_message: dict[str, list[ToolCall]] = {}
    late_by_seq: dict[int, list[ToolCall]] = {}
    for call in calls:
        calls_by_message.setdefault(call.message_id, []).append(call)
        if call.state == "result" and call.resolved_after_seq is not None:
            late_by_seq.setdefault(call.resolved_after_seq, []).append(call)
    for seq, message_id, role, content in history:
        own_calls = sorted(calls_by_message.get(message_id, []), key=lambda c: c.position)
        if role == "assistant" and own_calls:
            context.append(
                {"role": "assistant", "content": content, "tool_calls": [call.openai_call() for call in own_calls]}
            )
            for call in own_calls:
                context.append({"role": "tool", "tool_call_id": call.id, "content": as_seen(call)})
        else:
            context.append({"role": role, "content": content or ""})
        for call in late_by_seq.get(seq, []):
            replay = call.openai_call() | {"id": f"{call.id}.resumed"}
            context.append({"role": "assistant", "content": None, "tool_calls": [replay]})
            context.append({"role": "tool", "tool_call_id": replay["id"], "content": call.result or ""})
    return context


def as_seen(call: ToolCall) -> str:
    """What the model saw as this call's result in its original place."""
    if call.state == "result" and call.resolved_after_seq is None:
        return call.result or ""
    if call.state == "awaiting-confirmation":
        return AWAITING_CONFIRMATION_TEXT
    if call.state == "running" and (call.interrupt or {}).get("retrying"):
        return OUTCOME_UNKNOWN_TEXT if (call.interrupt or {}).get("outcome_unknown") else RETRYING_TEXT
    return PENDING_RESULT_TEXT


__all__ = [
    "AWAITING_CONFIRMATION_TEXT",
    "OUTCOME_UNKNOWN_TEXT",
    "PENDING_RESULT_TEXT",
    "RETRYING_TEXT",
    "as_seen",
    "model_context",
]
