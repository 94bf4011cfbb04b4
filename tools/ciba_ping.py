"""CIBA ping mode (CIBA Core 1.0 section 10.2): the notification token that routes a ping to its tool call.

In ping mode the backchannel request carries a `client_notification_token`; when the user has decided, the
provider POSTs `{"auth_req_id"}` to the client's notification endpoint with that token as its bearer. The
token here is `<thread id>.<tool call id>.<secret>` (the ids base64url-encoded), so the ingress knows which
thread to wake without a lookup table; the secret is 32 random bytes and only its SHA-256 is stored, with
the pending request. A ping proves nothing by itself: it only makes the thread poll the token endpoint now,
so a forged ping can never approve anything; an unknown, mismatched or replayed token wakes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class NotificationTarget:
    thread_id: str
    tool_call_id: str


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def new_notification_token(thread_id: str, tool_call_id: str) -> str:
    """A fresh, unguessable token bound to one thread and one tool call."""
    return f"{_encode(thread_id)}.{_encode(tool_call_id)}.{secrets.token_urlsafe(32)}"


def notification_target(token: str) -> NotificationTarget | None:
    """Which thread and tool call `token` names (None if it is not one of ours); says nothing of validity."""
    if not isinstance(token, str) or len(token) > 1024:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        return NotificationTarget(thread_id=_decode(parts[0]), tool_call_id=_decode(parts[1]))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digest: str | None) -> bool:
    return bool(digest) and hmac.compare_digest(token_digest(token), str(digest))
