"""`CIBARequest`: one backchannel authentication request, as the dev authorization server remembers it.

A plain record shared by the state that changes it, the file that keeps it and the pages that show it;
`public()` is the one view of it that leaves the server (never the `auth_req_id`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["STATUSES", "CIBARequest", "RequestStatus"]

RequestStatus = Literal["pending", "approved", "denied", "expired"]
STATUSES: tuple[str, ...] = ("pending", "approved", "denied", "expired")


@dataclass
class CIBARequest:
    """One backchannel authentication request, as the server remembers it."""

    id: str
    auth_req_id: str = field(repr=False)
    client_id: str
    sub: str
    username: str
    scopes: list[str]
    audience: str
    binding_message: str
    authorization_details: list[dict[str, Any]] | None
    created_at: float
    expires_at: float
    interval: int
    status: RequestStatus = "pending"
    decided_at: float | None = None
    finished: bool = False
    """A final answer (tokens, denial, expiry) was delivered: the auth_req_id is spent."""
    last_poll: float | None = None
    polls: int = 0
    client_notification_token: str | None = field(default=None, repr=False)
    """Ping mode: the bearer token the server sends to the client's notification endpoint."""

    def current_status(self, now: float) -> RequestStatus:
        if self.status == "pending" and now >= self.expires_at:
            return "expired"
        return self.status

    def public(self, now: float) -> dict[str, Any]:
        """What the phone, the CLI and tests see: never the auth_req_id."""
        return {
            "id": self.id,
            "user": self.username,
            "sub": self.sub,
            "binding_message": self.binding_message,
            "scope": " ".join(self.scopes),
            "audience": self.audience,
            "authorization_details": self.authorization_details,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_at": self.decided_at,
            "status": self.current_status(now),
            "finished": self.finished,
            "interval": self.interval,
            "polls": self.polls,
        }
