"""The CIBA client's vocabulary: the protocol's constants, its errors, and the typed answers of its two
calls (`BackchannelResponse`; `Pending`, `SlowDown`, `Approved`, `AccessDenied`, `ExpiredToken`,
`InvalidGrant`), with the retry policy and the provider metadata they are used with. No I/O here: the
HTTP side is `tools.ciba.client`, which re-exports all of these.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.backoff import exponential_delay
from tools.ciba.credentials_context import CIBACredentials

CIBA_GRANT_TYPE = "urn:openid:params:grant-type:ciba"
#: CIBA Core 1.0 section 7.3: the interval when the server sends none.
DEFAULT_INTERVAL = 5
#: CIBA Core 1.0 section 11: `slow_down` adds 5 seconds to this and every later poll.
SLOW_DOWN_INCREMENT = 5
#: Auth0's rule for `binding_message`: 1-64 of letters, digits, spaces and `+-_.,:#`.
BINDING_MESSAGE_RE = re.compile(r"[A-Za-z0-9 +\-_.,:#]{1,64}")

ClientAuthMethod = Literal["client_secret_post", "client_secret_basic", "private_key_jwt"]
LoginHintFormat = Literal["iss_sub", "plain"]


# ---------------------------------------------------------------------------------------------------
# Errors


class CIBAError(Exception):
    """The server (or the pre-flight check) refused the request with an OAuth `error` code.

    `status` is the HTTP status, None when the request was refused before sending. The description comes
    from the server and never contains this client's secret.
    """

    def __init__(self, error: str, description: str | None = None, status: int | None = None) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.error}{where}: {self.description}" if self.description else f"{self.error}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error, self.description, self.status))


class InvalidBindingMessage(CIBAError):
    """The binding message breaks Auth0's rule; raised before any request is sent."""

    def __init__(self, description: str, status: int | None = None) -> None:
        super().__init__("invalid_binding_message", description, status)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.description, self.status))


class CIBATransientError(Exception):
    """The server could not be reached or failed (5xx/429) even after retries; try again later.

    `maybe_sent` is True when a backchannel request may have reached the server before the failure
    (a read timeout), so a retry could notify the user twice.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_transient, (str(self), self.status, self.retry_after, self.maybe_sent))


def _restore_transient(message: str, status: int | None, retry_after: float | None, maybe_sent: bool) -> Any:
    return CIBATransientError(message, status=status, retry_after=retry_after, maybe_sent=maybe_sent)


def validate_binding_message(message: object) -> str:
    """Return `message` if Auth0 would accept it as a binding message, else raise `InvalidBindingMessage`."""
    if not isinstance(message, str):
        raise InvalidBindingMessage("binding_message must be a string")
    if not message.strip():
        raise InvalidBindingMessage("binding_message must not be empty")
    if len(message) > 64:
        raise InvalidBindingMessage(f"binding_message is {len(message)} characters long; at most 64 are allowed")
    if not BINDING_MESSAGE_RE.fullmatch(message):
        raise InvalidBindingMessage("binding_message may only contain letters, digits, spaces and +-_.,:#")
    return message


_BINDING_MESSAGE_SUBSTITUTES = {
    "&": "+",
    "/": "-",
    "@": " at ",
    "%": " pct",
    "$": "",
    "\u20ac": " EUR",
    "\u00a3": " GBP",
}


def fit_binding_message(text: str, *, limit: int = 64) -> str:
    """`text` made into a binding message any provider accepts (Auth0: at most 64 of letters, digits, spaces
    and `+-_.,:#`), for text you do not control (a merchant "A&B Caf\u00e9", a product name): accents are
    dropped, `&` becomes `+`, other characters become spaces, and an overlong text is cut at a word. The
    user reads it on their device to recognise the request, so keep what identifies it at the start."""
    import unicodedata

    for char, substitute in _BINDING_MESSAGE_SUBSTITUTES.items():
        text = str(text).replace(char, substitute)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    kept = "".join(c if BINDING_MESSAGE_RE.fullmatch(c) else " " for c in ascii_text)
    fitted = " ".join(kept.split())
    if len(fitted) > limit:
        head = fitted[: limit + 1]
        at_word = head.rsplit(" ", 1)[0] if " " in head else ""
        fitted = (at_word if len(at_word) >= limit // 2 else head[:limit]).rstrip(" +-_.,:#")
    if not fitted:
        raise InvalidBindingMessage(f"nothing of {text!r} can be shown as a binding message")
    return fitted


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class BackchannelResponse:
    """The answer of the backchannel authentication endpoint. `auth_req_id` is a secret: keep it stored."""

    auth_req_id: str = field(repr=False)
    expires_in: int
    interval: int = DEFAULT_INTERVAL


@dataclass(frozen=True)
class TokenSet:
    """The tokens of an approved request. Tokens are hidden from the repr."""

    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: list[str] = field(default_factory=list)
    id_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    authorization_details: list[dict[str, Any]] | None = None

    def to_credentials(self, *, received_at: float | None = None) -> CIBACredentials:
        """The credential a tool sees through `get_ciba_credentials()`."""
        at = time.time() if received_at is None else received_at
        return CIBACredentials(
            access_token=self.access_token,
            token_type=self.token_type,
            expires_in=self.expires_in,
            expires_at=at + self.expires_in if self.expires_in is not None else None,
            scope=list(self.scope),
            id_token=self.id_token,
            refresh_token=self.refresh_token,
            authorization_details=self.authorization_details,
        )


@dataclass(frozen=True)
class Pending:
    """`authorization_pending`: ask again after `interval` seconds."""

    interval: int


@dataclass(frozen=True)
class SlowDown:
    """`slow_down`: `interval` is the new interval (old + 5 s) for this and every later poll.

    `retry_after` is the server's `Retry-After` in seconds, when it sent one; wait for the larger of both.
    """

    interval: int
    retry_after: float | None = None

    @property
    def wait(self) -> float:
        return max(float(self.interval), self.retry_after or 0.0)


@dataclass(frozen=True)
class Approved:
    """The user approved; `tokens` holds the access token for the requested audience and scopes."""

    tokens: TokenSet


@dataclass(frozen=True)
class AccessDenied:
    """`access_denied`: the user said no (Auth0 also answers this for an expired request)."""

    description: str | None = None


@dataclass(frozen=True)
class ExpiredToken:
    """`expired_token`: the request expired before the user answered."""

    description: str | None = None


@dataclass(frozen=True)
class InvalidGrant:
    """`invalid_grant`: the `auth_req_id` is unknown, was issued to another client, or was already used."""

    description: str | None = None


PollResult = Pending | SlowDown | Approved | AccessDenied | ExpiredToken | InvalidGrant


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient faults: `attempts` tries in all, delays `base_delay * factor**n`.

    `jitter` is a fraction of each delay added at random, so many clients recovering from one outage do not
    retry in lock-step. A `Retry-After` from the server wins over the computed delay, up to `max_delay`.
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        floor = retry_after or 0.0  # the server's Retry-After wins over the computed delay
        base = exponential_delay(retry + 1, self.base_delay, self.max_delay, floor=floor, factor=self.factor)
        return base + random.uniform(0.0, base * self.jitter)

    def total_delay(self) -> float:
        """The longest the backoff sleeps of one call can take in all."""
        return sum(
            exponential_delay(n + 1, self.base_delay, self.max_delay, factor=self.factor) * (1 + self.jitter)
            for n in range(max(0, self.attempts - 1))
        )


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the OIDC discovery document CIBA needs."""

    issuer: str
    token_endpoint: str
    backchannel_authentication_endpoint: str
    jwks_uri: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def supports_authorization_details(self, types: Sequence[str]) -> bool:
        """Whether the provider accepts RAR `authorization_details` of all these types (RFC 9396 section 10:
        it lists them as `authorization_details_types_supported`; "*" is taken as any)."""
        supported = self.raw.get("authorization_details_types_supported")
        if not isinstance(supported, list):
            return False
        return "*" in supported or all(t in supported for t in types)


# ---------------------------------------------------------------------------------------------------
# The client
