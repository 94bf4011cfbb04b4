"""The typed vocabulary of one tool call's CIBA flow: its pending record (versioned on disk) and what a step
of the flow found (`Step`).

A call is in one of these states, read from the credential store (`tools.ciba.flow` moves it between them):

    (none)      no record: the first step sends a request            -> requesting
    requesting  a request is being sent, or its answer was lost      -> pending | requesting (again) | ended
    pending     the provider has it (`auth_req_id`); checks poll it  -> approved | pending | requesting | ended
    approved    a credential bound to the call's arguments           -> spent (the tool ran, or will never run)
    spent       the call's outcome, kept to replay on a re-run       (final)
    ended       denied, expired, refused, out of requests            (final: the record is gone)

`requesting` and `pending` are the `PendingRecord`'s `state`; `approved` and `spent` are the credential
row (`CREDENTIALS_NAMESPACE`); `ended` leaves neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from tools.ciba.credentials_context import CIBACredentials
from tools.ciba.interrupts import AsyncAuthorizationInterrupt
from tools.ciba.options import SpentOutcome

RECORD_VERSION = 1
"""The pending record's layout on disk (`v`). A record written before the field existed reads as 1."""


class CallState(StrEnum):
    REQUESTING = "requesting"
    """No `auth_req_id` yet: a sender holds the lease until `lease_until`, or died, or its answer was lost."""
    PENDING = "pending"
    """The provider holds the request (`auth_req_id`, `expires_at`); the next check is at `next_poll_at`."""


class PendingRecord(BaseModel):
    """One tool call's request while it waits for its user (stored sealed, `PENDING_NAMESPACE`)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=False)

    v: int = RECORD_VERSION
    state: CallState
    tool_name: str = ""
    tool_call_id: str = ""
    thread_id: str = ""
    binding_message: str | None = None
    arguments_sha256: str | None = None
    scopes: list[str] = []
    audience: str | None = None
    created_at: float | None = None
    """When the call's current request was first asked for (a request after a lost approval starts anew;
    unknown: counted from now)."""

    attempt: int = 1
    """The number of the request being sent (a resend claims the next one, `ATTEMPTS_NAMESPACE`)."""
    pushes: int = 1
    """Requests of this call that may have reached the user's device (capped: `MAX_REQUESTS_PER_CALL`)."""
    lease_until: float | None = None
    failures: int = 0
    """Transient failures in a row (the backoff's count)."""

    auth_req_id: str | None = None
    requested_at: float | None = None
    expires_at: float | None = None
    interval: int | None = None
    next_poll_at: float | None = None
    notification_token_sha256: str | None = None
    pinged_at: float | None = None
    polling_since: float | None = None
    """Set before a poll is sent, cleared by its answer: found set, the answer (maybe an approval) was lost."""
    polls: int = 0
    last_pending_at: float | None = None

    @classmethod
    def read(cls, stored: dict[str, Any] | None) -> PendingRecord | None:
        return None if stored is None else cls.model_validate(stored)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def poll_interval(self) -> int:
        return self.interval or 5


@dataclass(frozen=True)
class Ready:
    """Approved: run the tool with these credentials."""

    credentials: CIBACredentials


@dataclass(frozen=True)
class Replay:
    """The call has its outcome already (the tool ran, or the call was withdrawn or lost): give it again."""

    outcome: SpentOutcome


@dataclass(frozen=True)
class Waiting:
    """Still waiting for the user (or the provider) until `interrupt.next_check_at`."""

    interrupt: AsyncAuthorizationInterrupt


@dataclass(frozen=True)
class Ended:
    """The call ends without a token (denied, expired, refused, ...): `interrupt` says which."""

    interrupt: AsyncAuthorizationInterrupt


Step = Ready | Replay | Waiting | Ended
"""What one step of a tool call's flow found."""


def step_of(interrupt: AsyncAuthorizationInterrupt) -> Waiting | Ended:
    return Ended(interrupt) if interrupt.terminal else Waiting(interrupt)
