"""The HTTP API's request and response models: what the OpenAPI schema at `/openapi.json` shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from agents.messages import MESSAGE_ID_PATTERN, ChatMessage, PendingApproval
from agents.settings import DEFAULT_MAX_MESSAGE_CHARS

THREAD_ID_SCHEMA: dict[str, Any] = {"pattern": r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,128}$"}
"""What `runtime.validate_agent_id` accepts, for the schema (the check itself stays in one place, the
runtime, so a bad id is the same `invalid_thread_id` answer wherever it comes in)."""

MESSAGE_SCHEMA: dict[str, Any] = {"pattern": r"\S", "maxLength": DEFAULT_MAX_MESSAGE_CHARS}
"""A message needs something besides white space and at most `CHAT_MAX_MESSAGE_CHARS` characters (the
schema shows the default; the check itself is `agents.messages.checked_message_text`)."""


class ErrorBody(BaseModel):
    error: str = Field(description="A stable error code, e.g. `not_owner`, `invalid_thread_id`.")
    detail: Any = Field(description="A human-readable explanation (or a list of validation problems).")


class CreateThreadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thread_id: StrictStr | None = Field(
        default=None,
        description="Optional id to create or open (1-128 of letters, digits, `_`, `.`, `-`); default: a new uuid.",
        examples=["my-thread-1"],
        json_schema_extra=THREAD_ID_SCHEMA,
    )


class ThreadSummary(BaseModel):
    thread_id: str
    created_at: float | None = None
    title: str | None = Field(default=None, description="The first message of the thread, shortened.")
    last_active_at: float | None = Field(
        default=None, description="When a message was last sent to it (Unix seconds), to within 10 s."
    )


class ThreadCreated(ThreadSummary):
    owner: str = Field(description="The owner's `sub`: the caller.")
    created: bool = Field(description="False when the caller already had this thread.")


class ThreadList(BaseModel):
    threads: list[ThreadSummary]


class ThreadDescription(BaseModel):
    thread_id: str
    owner: str | None
    messages: int
    last_message_at: float | None


class SendMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: StrictStr = Field(
        description="The user's message.", examples=["buy 10 shares of MSFT"], json_schema_extra=MESSAGE_SCHEMA
    )
    message_id: StrictStr | None = Field(
        default=None,
        pattern=MESSAGE_ID_PATTERN.pattern,
        description="Your own id for this message: sending it again (after a lost answer) does not add it "
        "twice, it returns the same turn's messages. Default: a new id.",
        examples=["msg-2f1c9a"],
    )


class MessageList(BaseModel):
    thread_id: str
    messages: list[ChatMessage]


class InterruptList(BaseModel):
    thread_id: str
    interrupts: list[PendingApproval]


class ToolResultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_call_id: StrictStr = Field(max_length=256)
    approved: StrictBool


class StopResult(BaseModel):
    thread_id: str
    stopped: bool = Field(description="Whether an answer was under way (and is now stopped).")


class CibaPing(BaseModel):
    auth_req_id: StrictStr = Field(max_length=1024, description="The request the user decided on.")


class Health(BaseModel):
    ok: bool
    replica: str
    time: float


class DevLoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: StrictStr = Field(min_length=1, max_length=64, examples=["alice"])


class DevLoginResponse(BaseModel):
    access_token: str
    token_type: str
    expires_in: int
    sub: str


class PublicConfig(BaseModel):
    issuer: str | None = Field(description="The token issuer the agents accept.")
    audience: str | None
    dev_login_url: str | None = Field(description="`POST {username}` here for a demo token (dev server only).")
    dev_authz_url: str | None = Field(
        description="The dev authorization server (its `/dev/ciba/requests` JSON API plays the user's phone)."
    )
    approvals_url: str | None = Field(description="The page where the user approves purchases (plays the phone).")
    demo_users: list[str]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The request body cannot be read (not UTF-8, or not the declared type)."},
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
    403: {"model": ErrorBody, "description": "The thread belongs to another user."},
    404: {"model": ErrorBody, "description": "No thread with that id."},
    409: {"model": ErrorBody, "description": "The id differs from another thread's only in case."},
    413: {"model": ErrorBody, "description": "The request body is too large."},
    422: {"model": ErrorBody, "description": "Invalid thread id or request body."},
    503: {"model": ErrorBody, "description": "The thread's agent is unavailable or the service is at capacity; retry."},
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    429: {"model": ErrorBody, "description": "The caller (or the thread) has as many event streams open as allowed."},
}
BODY_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: ERROR_RESPONSES[400],
    413: ERROR_RESPONSES[413],
    422: {"model": ErrorBody, "description": "The request body is not what this route takes."},
}
"""The errors of a route with a body and no bearer token of the agent API (dev login, CIBA pings)."""

SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event.",
    "properties": {
        "event": {"type": "string", "description": "The event's type (`ready`, `message`, `tool_call`, ...)."},
        "id": {"type": "string", "description": "`<epoch>:<seq>`, for `Last-Event-ID`."},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
"""Each event of a `text/event-stream` answer (Open API 3.1 reads a stream's `schema` as one event's)."""

CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {
        "model": ErrorBody,
        "description": "The `message_id` was already used for other content, or the id differs from another "
        "thread's only in case.",
    },
    429: {"model": ErrorBody, "description": "The caller has as many threads as one user may create."},
}

SSE_DESCRIPTION = (
    "Server-sent events. Each event has `event:` = its type, `id:` = `<epoch>:<seq>` and `data:` = JSON "
    "(a `ThreadEvent`: `seq`, `epoch`, `type`, `data`, `at`)."
)
