"""The thread's records: chat messages (OpenAI chat format plus metadata) and tool calls with their state.

Tool results are not stored as messages: they live with their tool call (state, result, interrupt), and
the OpenAI `tool` messages are derived from them. That keeps a call that is still waiting for approval
answerable in order, whatever was said in the thread since.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from agents.errors import InvalidMessageError

MESSAGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""A sender's own message id (`send_message(..., message_id=)`): 1-128 letters, digits, `_.:-`."""


def validate_message_id(message_id: object) -> str:
    """`message_id` if it is a valid message id, else `InvalidMessageError` saying why."""
    if not isinstance(message_id, str) or not MESSAGE_ID_PATTERN.fullmatch(message_id):
        raise InvalidMessageError("message_id must be 1-128 characters of letters, digits, '_', '.', ':' and '-'")
    return message_id


def checked_message_text(content: object, max_chars: int) -> str:
    """A user's message as stored: stripped, not empty, at most `max_chars` characters
    (`CHAT_MAX_MESSAGE_CHARS`); else `InvalidMessageError` saying why. The one rule for the agent and the
    HTTP API (which refuses a bad message before it wakes the thread)."""
    if not isinstance(content, str):
        raise InvalidMessageError("message content must be a string")
    text = content.strip()
    if not text:
        raise InvalidMessageError("message is empty")
    if len(text) > max_chars:
        raise InvalidMessageError(f"message is too long ({len(text)} characters; the limit is {max_chars})")
    return text


def tool_call_id_from_model(wanted: object) -> str:
    """The id a model gave a tool call, if it is safe to key state on, log and put in a URL (the same
    characters as a message id); otherwise a fresh `call_<hex>`. A model endpoint chooses these ids, so one
    could forge log lines or paths with them."""
    if isinstance(wanted, str) and MESSAGE_ID_PATTERN.fullmatch(wanted):
        return wanted
    return f"call_{uuid.uuid4().hex[:24]}"


ToolCallState = Literal["call", "running", "pending-authorization", "awaiting-confirmation", "result"]
WAITING_FOR_USER: tuple[ToolCallState, ...] = ("pending-authorization", "awaiting-confirmation")
"""The states of a call that waits for its user: on their device (CIBA) or for an answer in the chat."""
Role = Literal["system", "user", "assistant", "tool"]
CONTINUES = "continues"
"""The metadata key of an assistant message written after one of an earlier message's calls was resolved
(an approval): that earlier message's id. Its reply goes on there, whatever was said in between."""
STOPPED = "stopped"
"""The metadata key of an assistant message the user stopped mid-stream (its text is what was written)."""
APPROVED_IN_CHAT: dict[str, Any] = {"confirmation": "approved"}
DENIED_IN_CHAT: dict[str, Any] = {"confirmation": "denied"}
"""The interrupt details a call keeps once its user answered its in-chat confirmation (clients show the
answer with the call: a denied call is shown as denied, not as a result)."""


class ToolRetry(BaseModel):
    """A call whose tool failed for a moment (`TransientToolError`): when it runs again, and why."""

    attempt: int
    next_attempt_at: float
    reason: str
    outcome_unknown: bool = False
    """An earlier run may have had its effect (`OutcomeUnknownError`): never report it failed."""


class ToolCall(BaseModel):
    """One call the model asked for, and what became of it. `interrupt` is what the call waits for (an
    approval on the user's device, or in the chat) or how that ended; `retry`, a run to come."""

    id: str
    message_id: str
    name: str
    arguments: str
    state: ToolCallState = "call"
    result: str | None = None
    interrupt: dict[str, Any] | None = None
    retry: ToolRetry | None = None
    created_at: float
    updated_at: float
    position: int = 0
    resolved_after_seq: int | None = None
    """Set when the call resolved after the thread moved on: the last message seq at that moment."""

    @property
    def answered_in_chat(self) -> bool:
        """Whether the user answered an in-chat confirmation of this call (`APPROVED_IN_CHAT`, `DENIED_IN_CHAT`)."""
        return (self.interrupt or {}).get("confirmation") in ("approved", "denied")

    @property
    def denied_in_chat(self) -> bool:
        return (self.interrupt or {}).get("confirmation") == "denied"

    def openai_call(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ChatMessage(BaseModel):
    """A message of the thread as clients see it (tool messages carry their call's state)."""

    id: str
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    state: ToolCallState | None = None
    created_at: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class PendingApproval(BaseModel):
    """A tool call waiting for the user: on their device (CIBA) or in the chat (confirmation)."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] | str
    kind: Literal["async-authorization", "confirmation"]
    binding_message: str | None = None
    expires_at: float | None = None
    next_check_at: float | None = None
    code: str | None = None

    @classmethod
    def of(cls, call: ToolCall) -> PendingApproval:
        """The approval `call` waits for (its state is `pending-authorization` or `awaiting-confirmation`)."""
        interrupt = call.interrupt or {}
        try:
            arguments: dict[str, Any] | str = json.loads(call.arguments)
        except ValueError:
            arguments = call.arguments
        return cls(
            tool_call_id=call.id,
            tool_name=call.name,
            arguments=arguments,
            kind="async-authorization" if call.state == "pending-authorization" else "confirmation",
            binding_message=interrupt.get("binding_message"),
            expires_at=interrupt.get("expires_at"),
            next_check_at=interrupt.get("next_check_at"),
            code=interrupt.get("code"),
        )


class ThreadEvent(BaseModel):
    """Something that happened in the thread, for live watchers (server-sent events)."""

    seq: int
    epoch: str
    type: Literal[
        "token", "message", "tool_call", "interrupt", "tool_result", "turn_start", "turn_end", "error", "deleted"
    ]
    data: dict[str, Any] = Field(default_factory=dict)
    at: float
