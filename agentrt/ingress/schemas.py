"""The HTTP API's request and response models: what the OpenAPI schema at `/openapi.json` shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from agents.messages import ChatMessage, PendingApproval


class ErrorBody(BaseModel):
    error: str = Field(description="A stable error code, e.g. `not_owner`, `invalid_thread_id`.")
    detail: Any = Field(description="A human-readable explanation (or a list of validation problems).")


class CreateThreadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thread_id: StrictStr | None = Field(
        default=None,
        description="Optional id to create or open (1-128 of letters, digits, `_`, `.`, `-`); default: a new uuid.",
        examples=["my-thread-1"],
    )


class ThreadSummary(BaseModel):
    thread_id: str
    created_at: float | None = None
    title: str | None = Field(default=None, description="The first message of the thread, shortened.")
    last_active_at: float | None = None


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
    content: StrictStr = Field(description="The user's message.", examples=["buy 10 shares of MSFT"])


class MessageList(BaseModel):
    thread_id: str
    messages: list[ChatMessage]


class InterruptList(BaseModel):
    thread_id: str
    interrupts: list[PendingApproval]


class ToolResultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_call_id: StrictStr
    approved: StrictBool


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
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
    403: {"model": ErrorBody, "description": "The thread belongs to another user."},
    404: {"model": ErrorBody, "description": "No thread with that id."},
    413: {"model": ErrorBody, "description": "The request body is too large."},
    422: {"model": ErrorBody, "description": "Invalid thread id or request body."},
    503: {"model": ErrorBody, "description": "The thread's agent is unavailable or the service is at capacity; retry."},
}
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    429: {"model": ErrorBody, "description": "The caller has as many threads as one user may create."},
}

SSE_DESCRIPTION = (
    "Server-sent events. Each event has `event:` = its type, `id:` = `<epoch>:<seq>` and `data:` = JSON "
    "(a `ThreadEvent`: `seq`, `epoch`, `type`, `data`, `at`)."
)
