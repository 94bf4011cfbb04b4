"""Typed errors the chat agents raise to callers (they cross Ray unchanged; the ingress maps them to HTTP)."""

from __future__ import annotations


class ChatError(Exception):
    """Base of the errors a caller of a chat agent can handle."""

    status_code = 400
    code = "chat_error"


class InvalidMessageError(ChatError, ValueError):
    """The message is empty, too long, or not text."""

    status_code = 422
    code = "invalid_message"


class MessageIdReusedError(ChatError):
    """A message id the thread already holds, sent with other content (or naming a reply)."""

    status_code = 409
    code = "message_id_reused"


class UnknownToolCallError(ChatError, LookupError):
    """No tool call with that id exists in this thread."""

    status_code = 404
    code = "unknown_tool_call"


class ToolCallNotAwaitingError(ChatError):
    """The tool call exists but is not waiting for a confirmation (already finished, or not confirmable)."""

    status_code = 409
    code = "tool_call_not_awaiting_confirmation"


class ToolCallNotPendingError(ChatError):
    """The tool call exists but is not waiting for an approval on the user's device (decided already)."""

    status_code = 409
    code = "tool_call_not_pending"


class TurnInProgressError(ChatError):
    """A message sent while the thread is answering another, under the `reject` overlap policy."""

    status_code = 409
    code = "turn_in_progress"


class UnauthenticatedError(ChatError, PermissionError):
    """The caller's bearer token is missing or invalid (signature, issuer, audience, expiry, algorithm)."""

    status_code = 401
    code = "unauthenticated"


class AuthUnavailableError(ChatError):
    """The caller's token cannot be checked now (the issuer's signing keys cannot be fetched): retry."""

    status_code = 503
    code = "authz_unavailable"
    retry_after = 5


class NotOwnerError(ChatError, PermissionError):
    """The caller is authenticated but does not own this thread."""

    status_code = 403
    code = "not_owner"


class ThreadQuotaExceededError(ChatError):
    """The caller already owns as many threads as one user may (`AGENT_MAX_THREADS_PER_USER`)."""

    status_code = 429
    code = "thread_quota_exceeded"
