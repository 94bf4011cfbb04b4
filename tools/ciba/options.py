"""What `with_async_user_confirmation` is configured with, and the vocabulary of its stored records.

`AsyncConfirmationOptions` (the scopes, audience, binding message, callbacks, delivery mode of one wrapped
tool), the namespaces its records live under in the `CredentialStore`, and the two helpers that turn a
tool call's arguments into a request (`resolve`) and into the fingerprint an approval is bound to
(`arguments_digest`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tools.base import ToolContext, ToolError
from tools.ciba.interrupts import AsyncAuthorizationInterrupt

T = TypeVar("T")

#: A value, or a (sync or async) function of the tool's validated arguments returning it.
Resolvable = T | Callable[..., T] | Callable[..., Awaitable[T]]
InterruptCallback = Callable[[AsyncAuthorizationInterrupt, ToolContext], Any]

PENDING_NAMESPACE = "ciba:pending"
PINGS_NAMESPACE = "ciba:pings"
"""The notification tokens a thread accepted, by digest: each ping is accepted once."""
CREDENTIALS_NAMESPACE = "ciba:credentials"
ATTEMPTS_NAMESPACE = "ciba:attempts"

DENIED_TEXT = "The user has denied the request"
DEFAULT_CREDENTIAL_TTL = 300.0
PING_CHECKS_PER_REQUEST = 3
"""In ping mode with no `ping_fallback`, the checks on a timer (for a lost ping) are spread over the
request's lifetime this many times: a thread waiting for its user sleeps between them."""
MAX_REQUESTS_PER_CALL = 3
"""At most this many CIBA requests that may have reached the user's device, for one tool call, on every
path: the first, new ones after approvals lost on the way (`CibaFlow._ask_again`), and resends of a request
whose answer was lost (a timeout or a 5xx after sending: `CibaFlow._resume_requesting`). A request that
certainly never left (no connection, 429, 503) does not count. Past the cap the call ends clearly."""


def unknown_outcome_text(tool_name: str) -> str:
    """The result of a call whose effect may have happened, when finding out stopped being possible (its
    approval expired): what the user must know, and must not do."""
    return (
        f"Outcome unknown: {tool_name} was sent, but its answer was lost and it could not be confirmed before "
        "the approval expired. It may have taken effect: do not repeat it before checking (for a purchase, "
        "the orders list shows whether it was placed)."
    )


@dataclass(frozen=True)
class SpentOutcome:
    """What a spent credential's call ended with (replayed on a re-run after a crash)."""

    result: Any
    error: str | None

    def replay(self) -> Any:
        if self.error is not None:
            raise ToolError(self.error)
        return self.result


@dataclass(frozen=True)
class AsyncConfirmationOptions:
    """What to ask for, and how to react. See `with_async_user_confirmation`."""

    scopes: tuple[str, ...]
    binding_message: Resolvable[str]
    user_id: Resolvable[str] | None = None
    audience: str | None = None
    requested_expiry: int = 300
    authorization_details: Resolvable[list[dict[str, Any]] | None] = None
    on_authorization_interrupt: InterruptCallback | None = None
    on_unauthorized: InterruptCallback | None = None
    retry_backoff: tuple[float, float] = (2.0, 60.0)
    """(first, max) seconds between attempts while the authorization server is unreachable."""
    pending_retention: float = 3600.0
    """How long a pending record outlives its request, so a late check still reports "expired"."""
    delivery_mode: str = "poll"
    """"ping": each request carries a notification token and the provider's ping makes the next check
    happen at once (`accept_ping`); checks on a timer, in case a ping is lost, still happen every
    `ping_fallback` seconds, or (None) `PING_CHECKS_PER_REQUEST` times over the request's lifetime."""
    ping_fallback: float | None = None
    ping_key: bytes | None = None
    """The MAC key of notification tokens (`tools.ciba.ping.ping_key`); required in ping mode."""
    handoff: Any = None
    """Ping mode: the root's `tools.ciba.probe.CibaHandoff`. With it, a sleeping thread's safety-net checks
    run as alarm probes without waking it (`probe_payload`), and its own checks claim the request there
    first. None: every check wakes the thread (the probe is not offered)."""


def ping_check_gap(interval: float, lifetime: float, fallback: float | None) -> float:
    """Ping mode: seconds from one safety-net check (for a lost ping) to the next: `fallback`, or a few
    checks over the request's `lifetime`, never more often than the server's `interval`."""
    return max(float(interval), fallback if fallback is not None else lifetime / PING_CHECKS_PER_REQUEST)


@dataclass(frozen=True)
class RequestParams:
    """One tool call's request, resolved from its arguments: whom to ask, what they see."""

    user_id: str
    binding_message: str
    authorization_details: list[dict[str, Any]] | None
    arguments_sha256: str


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """A fingerprint of the tool's arguments, to bind an approval to the action it was given for."""
    canonical = json.dumps(dict(arguments), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def resolve(value: Any, arguments: Mapping[str, Any]) -> Any:
    """A `Resolvable`'s value for these tool arguments."""
    if callable(value):
        value = value(**arguments)
    if inspect.isawaitable(value):
        value = await value
    return value
