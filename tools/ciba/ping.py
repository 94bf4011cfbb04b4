"""CIBA ping mode (CIBA Core 1.0 section 10.2): the notification token that routes a ping to its tool call.

In ping mode the backchannel request carries a `client_notification_token`; when the user has decided, the
provider POSTs `{"auth_req_id"}` to the client's notification endpoint with that token as its bearer. The
token here is `<thread id>.<tool call id>.<nonce>.<mac>` (ids base64url-encoded): the MAC (HMAC-SHA256 with
a key derived from `AUTH0_SESSION_ENCRYPTION_KEY`) lets the ingress refuse a forged token without waking
any agent, and the ids tell it which thread to wake for a genuine one. The agent then checks that it is
the token of the call's current request (only its SHA-256 is stored) and that it was not used before. A
ping proves nothing by itself: it only makes the thread poll the token endpoint now, so even a genuine
token cannot approve anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from auth.settings import AuthSettings

_INFO = b"agentrt ciba ping token v1"


@dataclass(frozen=True)
class NotificationTarget:
    thread_id: str
    tool_call_id: str


def ping_key(secret: str | bytes) -> bytes:
    """The MAC key of notification tokens, derived from the deployment's encryption key."""
    material = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not material:
        raise ValueError("the ping key needs a non-empty secret")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(material)


def deployment_ping_key(settings: AuthSettings | None = None) -> bytes:
    """The deployment's notification-token key: `ping_key` of `AUTH0_SESSION_ENCRYPTION_KEY`, the one key
    the thread that signs a token, the ingress that checks a ping and the thread that takes it all use."""
    return ping_key((settings or AuthSettings()).require_encryption_key().get_secret_value())


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, body: str) -> str:
    return _encode(hmac.new(key, body.encode(), hashlib.sha256).digest())


def new_notification_token(key: bytes, thread_id: str, tool_call_id: str) -> str:
    """A fresh token for one thread and one tool call, signed with `key`."""
    body = f"{_encode(thread_id.encode())}.{_encode(tool_call_id.encode())}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(key, body)}"


def notification_target(key: bytes, token: str) -> NotificationTarget | None:
    """The thread and tool call a genuine token names; None for anything we did not sign."""
    if not isinstance(token, str) or len(token) > 1024:
        return None
    body, _, mac = token.rpartition(".")
    parts = body.split(".")
    if len(parts) != 3 or not all(parts) or not hmac.compare_digest(_mac(key, body), mac):
        return None
    try:
        return NotificationTarget(thread_id=_decode(parts[0]).decode(), tool_call_id=_decode(parts[1]).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digest: str | None) -> bool:
    return bool(digest) and hmac.compare_digest(token_digest(token), str(digest))
