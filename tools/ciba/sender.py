"""`RetryingSender`: one HTTP request to the provider, retried while that is safe.

A provider outage must never look like the user saying no, and a request must never take effect twice
because it was retried. So a fault is retried with the `RetryPolicy`'s backoff only when sending again is
harmless: always for a replay-safe request (discovery, a configuration check), and for the others
(a backchannel request, a token poll) only when the request certainly did not take effect — the
connection failed, or the server answered 429 or 503. A 502 or 504 comes from a gateway that may have
passed the request on (the provider handed out the tokens, and its answer was lost), so it is ambiguous,
as a timeout after sending is. Anything else becomes `CIBATransientError`, with `maybe_sent` saying
whether the provider may have acted on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from runtime.backoff import retry_after_seconds
from tools.ciba.types import CIBATransientError, RetryPolicy
from tools.ciba.wire import oauth_error

log = logging.getLogger("tools.ciba.client")

CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Faults before the request left: sending again is always safe."""
RETRYABLE_STATUSES_NOT_SENT = frozenset({429, 503})
"""Answers that say the request was not acted on (a 502/504 says nothing of the kind)."""


@dataclass
class _Failure:
    """Why an attempt failed, and what the server said about waiting."""

    reason: str
    status: int | None = None
    retry_after: float | None = None


@dataclass
class RetryingSender:
    """Send requests over `http()` (the caller's client for the running loop) with `retry`'s policy."""

    http: Callable[[], httpx.AsyncClient]
    retry: RetryPolicy
    refresh_form: Callable[[dict[str, str]], dict[str, str]] | None = None
    """Called before each retry with the form (a `private_key_jwt` assertion is used once: a fresh one)."""

    async def send(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        replay_safe: bool,
    ) -> httpx.Response:
        """The server's answer (a 4xx included); `CIBATransientError` when it stays unreachable or 5xx."""
        attempts = max(1, self.retry.attempts)
        failure = _Failure("no attempt")
        for attempt in range(attempts):
            if attempt and form is not None and self.refresh_form is not None:
                form = self.refresh_form(form)
            outcome = await self._attempt(operation, method, url, form, headers, replay_safe)
            if isinstance(outcome, httpx.Response):
                return outcome
            if outcome.status is None:  # a connection fault: what the last answer said still holds
                outcome.status, outcome.retry_after = failure.status, failure.retry_after
            failure = outcome
            if attempt + 1 >= attempts:
                break
            delay = self.retry.delay(attempt, failure.retry_after)
            log.warning(
                "CIBA %s to %s failed (%s); retry %d/%d in %.2fs",
                operation,
                url,
                failure.reason,
                attempt + 1,
                attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
        raise CIBATransientError(
            f"{operation} failed after {attempts} attempts ({failure.reason})",
            status=failure.status,
            retry_after=failure.retry_after,
        )

    async def _attempt(
        self,
        operation: str,
        method: str,
        url: str,
        form: dict[str, str] | None,
        headers: dict[str, str] | None,
        replay_safe: bool,
    ) -> httpx.Response | _Failure:
        """One try: the answer to hand back, a `_Failure` worth retrying, or `CIBATransientError`."""
        try:
            response = await self.http().request(method, url, data=form, headers=headers)
        except CONNECT_ERRORS as exc:
            return _Failure(type(exc).__name__)
        except httpx.TransportError as exc:
            if not replay_safe:
                detail = f"{operation} failed after the request was sent ({type(exc).__name__})"
                raise CIBATransientError(detail, maybe_sent=True) from None
            return _Failure(type(exc).__name__)
        status = response.status_code
        retryable = status in RETRYABLE_STATUSES_NOT_SENT or (replay_safe and status >= 500)
        if status == 429 and oauth_error(response)[0] == "slow_down":
            retryable = False  # the token endpoint's slow_down, whatever the status it uses
        if retryable:
            return _Failure(f"HTTP {status}", status, retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500:
            raise CIBATransientError(
                f"{operation} failed with HTTP {status}", status=status, maybe_sent=not replay_safe
            )
        return response


__all__ = ["CONNECT_ERRORS", "RETRYABLE_STATUSES_NOT_SENT", "RetryingSender"]
