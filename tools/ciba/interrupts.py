"""Typed interrupts of an async (CIBA) authorization, with the stable codes of Auth0's JS SDK.

An interrupt tells the agent that a tool call cannot finish now: it waits for the user's approval on
another device (`AuthorizationPendingInterrupt`, `AuthorizationPollingInterrupt`), or the authorization
ended without a token (denied, expired, invalid grant, no push device, request refused). They are
exceptions because the tool's own code path must stop, and they are data because the agent persists
them, streams them to the browser and sends them across Ray processes. Hence one JSON schema for all:

    {"code", "message", "tool_name", "tool_call_id", "thread_id", "expires_at", "interval",
     "next_check_at", "binding_message", "scopes", ...subclass fields}

`to_dict()` / `from_dict()` round-trip exactly (the subclass is chosen by `code`), and pickling goes
through the same dict, so an interrupt crosses `ray.put`/`ray.get` unchanged.

Deliberately absent: the `auth_req_id` and any token. The `auth_req_id` lets whoever holds the client
credentials fetch the user's token, so it stays in the encrypted credential store only.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

PREFIX = "ASYNC_AUTHORIZATION_"

#: The fields every interrupt carries, in the order of `to_dict()`.
COMMON_FIELDS: tuple[str, ...] = (
    "tool_name",
    "tool_call_id",
    "thread_id",
    "expires_at",
    "interval",
    "next_check_at",
    "binding_message",
    "scopes",
)


class AsyncAuthorizationInterrupt(Exception):
    """Base of every async-authorization interrupt.

    `expires_at` and `next_check_at` are epoch seconds; `interval` is the polling interval in seconds the
    authorization server asked for (after any `slow_down`); `next_check_at` is the earliest moment a check
    may poll again. Subclasses only change `code`, the default message and, for a few, extra fields.
    """

    code: ClassVar[str] = PREFIX + "INTERRUPT"
    default_message: ClassVar[str] = "The tool call is waiting for an async authorization"
    extra_fields: ClassVar[tuple[str, ...]] = ()
    terminal: ClassVar[bool] = False
    """True when no token will come for this request: the tool call has its final (negative) outcome."""

    _registry: ClassVar[dict[str, type[AsyncAuthorizationInterrupt]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            existing = AsyncAuthorizationInterrupt._registry.get(cls.code)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise TypeError(f"interrupt code {cls.code} is already used by {existing.__name__}")
            AsyncAuthorizationInterrupt._registry[cls.code] = cls

    def __init__(
        self,
        message: str | None = None,
        *,
        tool_name: str | None = None,
        tool_call_id: str | None = None,
        thread_id: str | None = None,
        expires_at: float | None = None,
        interval: float | None = None,
        next_check_at: float | None = None,
        binding_message: str | None = None,
        scopes: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        self.message: str = message or self.default_message
        super().__init__(self.message)
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id
        self.thread_id = thread_id
        self.expires_at = expires_at
        self.interval = interval
        self.next_check_at = next_check_at
        self.binding_message = binding_message
        self.scopes: list[str] | None = list(scopes) if scopes is not None else None

    # -- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The interrupt as JSON-ready data (never an `auth_req_id` or token)."""
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        for name in COMMON_FIELDS + self.extra_fields:
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsyncAuthorizationInterrupt:
        """Rebuild the interrupt `data` describes, as the subclass its `code` names.

        Unknown keys are ignored (a newer writer may add fields); an unknown code raises `ValueError`.
        Called on a subclass, the result must also be an instance of that subclass.
        """
        code = data.get("code")
        target = AsyncAuthorizationInterrupt._registry.get(code) if isinstance(code, str) else None
        if target is None:
            raise ValueError(f"unknown async authorization interrupt code: {code!r}")
        if not issubclass(target, cls):
            raise ValueError(f"code {code} is a {target.__name__}, not a {cls.__name__}")
        fields = {name: data.get(name) for name in COMMON_FIELDS + target.extra_fields if name in data}
        return target(data.get("message"), **fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> AsyncAuthorizationInterrupt:
        return cls.from_dict(json.loads(text))

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as `cls(*self.args)` by default, which would drop every keyword field.
        return (_restore_interrupt, (self.to_dict(),))

    def __repr__(self) -> str:
        where = f", tool_call_id={self.tool_call_id!r}" if self.tool_call_id else ""
        return f"{type(self).__name__}(code={self.code!r}{where}, message={self.message!r})"


def _restore_interrupt(data: dict[str, Any]) -> AsyncAuthorizationInterrupt:
    return AsyncAuthorizationInterrupt.from_dict(data)


class AuthorizationPendingInterrupt(AsyncAuthorizationInterrupt):
    """The user has not answered yet; check again at `next_check_at`."""

    code = PREFIX + "AUTHORIZATION_PENDING"
    default_message = "Authorization pending: waiting for the user to approve the request on their device"


class AuthorizationPollingInterrupt(AsyncAuthorizationInterrupt):
    """Polling must back off: the server said `slow_down`, or could not be reached (a transient fault).

    `interval` is the new polling interval (already increased by 5 s after a `slow_down`) and
    `retry_after` the seconds to wait before the next poll; `reason` is `slow_down` or `transient_error`.
    This is never a denial.
    """

    code = PREFIX + "AUTHORIZATION_POLLING_ERROR"
    default_message = "Authorization polling must slow down; the request is still pending"
    extra_fields = ("retry_after", "reason")

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after
        self.reason = reason


class AccessDeniedInterrupt(AsyncAuthorizationInterrupt):
    """The user (or the server on their behalf) denied the request."""

    code = PREFIX + "ACCESS_DENIED"
    default_message = "The user has denied the request"
    terminal = True


class AuthorizationRequestExpiredInterrupt(AsyncAuthorizationInterrupt):
    """The user did not answer before the request expired."""

    code = PREFIX + "AUTHORIZATION_REQUEST_EXPIRED"
    default_message = "The authorization request expired before the user approved it"
    terminal = True


class InvalidGrantInterrupt(AsyncAuthorizationInterrupt):
    """The server no longer knows the request (already used, or never issued to this client)."""

    code = PREFIX + "INVALID_GRANT"
    default_message = "The authorization request is invalid or was already used"
    terminal = True


class UserDoesNotHavePushNotificationsInterrupt(AsyncAuthorizationInterrupt):
    """The user has no device enrolled to receive the approval request."""

    code = PREFIX + "USER_DOES_NOT_HAVE_PUSH_NOTIFICATIONS"
    default_message = "The user does not have push notifications enabled, so they cannot approve the request"
    terminal = True


class AuthorizationRequestFailedInterrupt(AsyncAuthorizationInterrupt):
    """The server refused to start the request (`unknown_user_id`, `invalid_scope`, `invalid_client`, ...).

    Not one of Auth0's codes: Auth0's SDKs report any such refusal as "no push notifications", which
    misleads the user; here the OAuth `error` is kept (never a secret) and the message says what failed.
    """

    code = PREFIX + "AUTHORIZATION_REQUEST_FAILED"
    default_message = "The authorization request could not be started"
    extra_fields = ("error",)
    terminal = True

    def __init__(self, message: str | None = None, *, error: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.error = error


def is_interrupt(exc: object, code: str | None = None) -> bool:
    """True if `exc` is an async-authorization interrupt (with `code`, when given).

    Also true for the dict form (`to_dict()` output) and for Ray's wrapped task errors, whose `cause`
    is the interrupt, so callers on either side of a process boundary can use the same check.
    """
    if isinstance(exc, dict):
        found = exc.get("code")
        known = isinstance(found, str) and found in AsyncAuthorizationInterrupt._registry
        return known and (code is None or found == code)
    if not isinstance(exc, AsyncAuthorizationInterrupt):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AsyncAuthorizationInterrupt):
            exc = cause
        else:
            return False
    return code is None or exc.code == code


__all__ = [
    "AccessDeniedInterrupt",
    "AsyncAuthorizationInterrupt",
    "AuthorizationPendingInterrupt",
    "AuthorizationPollingInterrupt",
    "AuthorizationRequestExpiredInterrupt",
    "AuthorizationRequestFailedInterrupt",
    "InvalidGrantInterrupt",
    "UserDoesNotHavePushNotificationsInterrupt",
    "is_interrupt",
]
