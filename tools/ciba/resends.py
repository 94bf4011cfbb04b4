"""Sending a tool call's CIBA request again, and the cap on it.

A request is sent again in two cases: its answer never arrived (the process died mid-request, a timeout
or a 502/504 after sending: the record stays `requesting`), or the approval was lost with the poll answer
that carried it (`invalid_grant` after a lost poll). Either may push the user's device once more, so both
go through one cap, `MAX_REQUESTS_PER_CALL` requests that may have reached the provider, and a record
still asking lives no longer than its first request would have. `RequestResends` is a base of
`tools.ciba.provider.CibaRequests`, which supplies the sending and the interrupts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from tools.base import Tool, ToolContext
from tools.ciba import metrics
from tools.ciba.credential_store import CredentialStore
from tools.ciba.interrupts import (
    AsyncAuthorizationInterrupt,
    AuthorizationPendingInterrupt,
    AuthorizationRequestFailedInterrupt,
)
from tools.ciba.options import (
    ATTEMPTS_NAMESPACE,
    MAX_REQUESTS_PER_CALL,
    PENDING_NAMESPACE,
    AsyncConfirmationOptions,
)

log = logging.getLogger("tools.ciba.provider")


class RequestResends:
    """Resending a request within the cap (a base of `CibaRequests`, which supplies what is declared here)."""

    tool: Tool
    options: AsyncConfirmationOptions
    store: CredentialStore
    clock: Callable[[], float]
    _params: Callable[..., Any]
    _send_request: Callable[..., Any]
    _interrupt: Callable[..., AsyncAuthorizationInterrupt]
    _lease: Callable[[], float]

    async def _resume_requesting(
        self, ctx: ToolContext, key: str, arguments: Mapping[str, Any], record: dict[str, Any]
    ) -> None:
        """A record without `auth_req_id`: wait while its sender may still be at work, else take over (within
        the per-call cap on requests, and the first request's lifetime)."""
        now = self.clock()
        wait_until = max(float(record.get("lease_until") or 0.0), float(record.get("next_poll_at") or 0.0))
        if now < wait_until:
            raise self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=wait_until)
        await self._end_if_out_of_requests(ctx, key, record, now)
        attempt = int(record.get("attempt") or 1) + 1
        params = await self._params(ctx, arguments)
        claimed = await self.store.create_if_absent(
            ATTEMPTS_NAMESPACE, f"{key}#{attempt}", {"at": now}, ttl=self._requesting_ttl(record, now)
        )
        if not claimed:
            await self._skip_if_claimer_died(key, record, attempt, now)
            return
        if not record.get("failures"):
            log.warning(
                "CIBA request for tool call %s was left half-sent (the process stopped mid-request?); sending it again",
                ctx.tool_call_id,
            )
        record.update(
            attempt=attempt,
            pushes=self._pushes(record) + 1,
            lease_until=now + self._lease(),
            binding_message=params.binding_message,
            arguments_sha256=params.arguments_sha256,
        )
        await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._requesting_ttl(record, now))
        await self._send_request(ctx, key, params, record)

    async def _skip_if_claimer_died(self, key: str, record: dict[str, Any], attempt: int, now: float) -> None:
        """Another caller claimed `attempt`. It records the attempt in the pending record before it sends, so
        a claim older than a lease while the record still shows the attempt before it means the claimer died
        in between, having sent nothing: record the attempt as passed, so that the next check claims the one
        after it (without this, every later check would see the claim taken and wait for a sender that is
        gone, forever)."""
        claim = await self.store.get(ATTEMPTS_NAMESPACE, f"{key}#{attempt}")
        if claim is None or now < float(claim.get("at") or 0.0) + self._lease():
            return  # its claimer may be sending the request now
        log.warning(
            "CIBA tool call %s: attempt %d was claimed but never sent; skipping it", record.get("tool_call_id"), attempt
        )
        await self.store.put(
            PENDING_NAMESPACE, key, {**record, "attempt": attempt}, ttl=self._requesting_ttl(record, now)
        )

    async def _end_if_out_of_requests(self, ctx: ToolContext, key: str, record: dict[str, Any], now: float) -> None:
        """Before another request for this call: end the call (a terminal, clear result) if it has had its
        `MAX_REQUESTS_PER_CALL` requests that may have reached the user's device, or if the first request's
        lifetime has passed without one being accepted. Otherwise a slow provider would push the user's phone
        again at every check, for as long as it stays slow."""
        first_deadline = float(record.get("created_at") or now) + self.options.requested_expiry
        if self._pushes(record) < MAX_REQUESTS_PER_CALL and now < first_deadline:
            return
        metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="error")
        await self.store.delete(PENDING_NAMESPACE, key)
        log.warning(
            "CIBA tool call %s: no request accepted after %d sent; ending the call",
            ctx.tool_call_id,
            self._pushes(record),
        )
        raise self._interrupt(
            AuthorizationRequestFailedInterrupt,
            ctx,
            record,
            f"The approval request for {self.tool.name} could not be completed: the authorization server did not "
            f"answer in time ({self._pushes(record)} request(s) sent, the last ones may have reached the user's "
            "device). Nothing was done; any approval still shown on the device will not be used. "
            "Ask again later.",
            error="too_many_requests",
        )

    @staticmethod
    def _pushes(record: Mapping[str, Any]) -> int:
        """Requests of this call that may have reached the provider (and so the user's device)."""
        return int(record.get("pushes") or record.get("attempt") or 1)

    def _requesting_ttl(self, record: Mapping[str, Any], now: float) -> float:
        """A record still asking lives as long as its first request would have, never longer: a write
        does not extend it."""
        created = float(record.get("created_at") or now)
        return max(1.0, created + self.options.requested_expiry - now) + self.options.pending_retention

    async def _ask_again(
        self, ctx: ToolContext, key: str, record: dict[str, Any], arguments: Mapping[str, Any]
    ) -> NoReturn:
        """The user approved, but the tokens went to a poll whose answer was lost and the server has spent
        the request: send a new one for the same call (the user approves once more) instead of failing a
        purchase they approved."""
        log.warning(
            "the approval for tool call %s was lost with the answer that carried it; asking the user again",
            ctx.tool_call_id,
        )
        params = await self._params(ctx, arguments)
        now = self.clock()
        record.update(
            state="requesting",
            attempt=int(record.get("attempt") or 1) + 1,
            pushes=self._pushes(record) + 1,
            created_at=now,  # a new request: the user has its lifetime to answer it
            auth_req_id=None,
            lease_until=now + self._lease(),
            next_poll_at=None,
            failures=0,
            binding_message=params.binding_message,
            arguments_sha256=params.arguments_sha256,
        )
        await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._requesting_ttl(record, now))
        await self._send_request(ctx, key, params, record)
