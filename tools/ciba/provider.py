"""Talking to the provider for one tool call: the CIBA request, its checks, and their outcomes.

`CibaRequests` is the half of `AsyncUserConfirmation` (see `tools.ciba.confirmation`, which has the
guarantees) that sends the backchannel request, polls the token endpoint once per due check, stores an
approval, turns every other answer into an interrupt, and asks the user again when an approval was lost
with the answer that carried it. The options and record vocabulary are `tools.ciba.options`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from runtime.backoff import exponential_delay
from tools.base import Tool, ToolContext, ToolError
from tools.ciba import metrics
from tools.ciba.client import (
    AccessDenied,
    Approved,
    CIBAClient,
    CIBAError,
    CIBATransientError,
    ExpiredToken,
    InvalidBindingMessage,
    InvalidGrant,
    Pending,
    SlowDown,
    validate_binding_message,
)
from tools.ciba.credential_store import CredentialStore
from tools.ciba.interrupts import (
    AccessDeniedInterrupt,
    AsyncAuthorizationInterrupt,
    AuthorizationPendingInterrupt,
    AuthorizationPollingInterrupt,
    AuthorizationRequestExpiredInterrupt,
    AuthorizationRequestFailedInterrupt,
    InvalidGrantInterrupt,
    UserDoesNotHavePushNotificationsInterrupt,
)
from tools.ciba.options import (
    CREDENTIALS_NAMESPACE,
    DEFAULT_CREDENTIAL_TTL,
    MAX_REQUESTS_PER_CALL,
    PENDING_NAMESPACE,
    AsyncConfirmationOptions,
    RequestParams,
    arguments_digest,
    ping_check_gap,
    resolve,
)
from tools.ciba.ping import new_notification_token, token_digest
from tools.ciba.resends import RequestResends

log = logging.getLogger(__name__)

HANDOFF_WAIT_SECONDS = 2.0
"""How long a check waits for an alarm probe's poll of the same request before it looks again later."""

_NO_PUSH_RE = re.compile(r"push|enrol|authenticator|guardian", re.IGNORECASE)


class CibaRequests(RequestResends):
    """The provider side of `AsyncUserConfirmation` (a mixin: the wrapper supplies these attributes)."""

    tool: Tool
    options: AsyncConfirmationOptions
    store: CredentialStore
    client: CIBAClient
    clock: Callable[[], float]
    _approved_about: dict[str, float]
    key_for: Callable[[ToolContext], str]

    def handoff_key(self, ctx: ToolContext) -> str:
        """This call's row in the root's hand-off store (the agent's name makes it unique in the root)."""
        return f"{ctx.agent_name}/{self.key_for(ctx)}"

    async def _params(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> RequestParams:
        user_id = await resolve(self.options.user_id, arguments) if self.options.user_id is not None else None
        user_id = user_id or ctx.owner
        if not isinstance(user_id, str) or not user_id:
            raise ToolError(f"{self.tool.name} needs the user's approval, but the thread has no owner to ask")
        binding_message = await resolve(self.options.binding_message, arguments)
        details = await resolve(self.options.authorization_details, arguments)
        try:
            validate_binding_message(binding_message)
        except InvalidBindingMessage as exc:  # refused before any record or request exists
            raise self._refusal(exc, ctx, {"binding_message": str(binding_message)[:80]}) from None
        return RequestParams(
            user_id=user_id,
            binding_message=binding_message,
            authorization_details=details,
            arguments_sha256=arguments_digest(arguments),
        )

    def _record_ttl(self, expires_in: float | None = None) -> float:
        return float(expires_in or self.options.requested_expiry) + self.options.pending_retention

    def _lease(self) -> float:
        """How long a request in flight may take before another caller may assume its sender died."""
        return self.client.max_request_seconds + 5.0

    def _new_record(self, ctx: ToolContext, params: RequestParams, now: float) -> dict[str, Any]:
        return {
            "state": "requesting",
            "attempt": 1,
            "pushes": 1,
            "lease_until": now + self._lease(),
            "next_poll_at": None,
            "failures": 0,
            "auth_req_id": None,
            "expires_at": None,
            "interval": None,
            "binding_message": params.binding_message,
            "arguments_sha256": params.arguments_sha256,
            "scopes": list(self.options.scopes),
            "audience": self.options.audience,
            "tool_name": self.tool.name,
            "tool_call_id": ctx.tool_call_id,
            "thread_id": ctx.thread_id,
            "created_at": now,
        }

    async def _send_request(
        self, ctx: ToolContext, key: str, params: RequestParams, record: dict[str, Any]
    ) -> NoReturn:
        notification_token = None
        if self.options.delivery_mode == "ping" and self.options.ping_key:
            notification_token = new_notification_token(self.options.ping_key, ctx.thread_id, ctx.tool_call_id)
            record["notification_token_sha256"] = token_digest(notification_token)
            record.pop("pinged_at", None)
        try:
            response = await self.client.backchannel_authenticate(
                user_id=params.user_id,
                scope=list(self.options.scopes),
                binding_message=params.binding_message,
                audience=self.options.audience,
                requested_expiry=self.options.requested_expiry,
                authorization_details=params.authorization_details,
                client_notification_token=notification_token,
            )
        except CIBAError as exc:
            metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="error")
            await self.store.delete(PENDING_NAMESPACE, key)
            raise self._refusal(exc, ctx, record) from None
        except CIBATransientError as exc:
            now = self.clock()
            failures = int(record.get("failures") or 0) + 1
            backoff = max(self._backoff(failures, 0.0), exc.retry_after or 0.0)  # the server's Retry-After wins
            if exc.maybe_sent:
                log.warning("CIBA request for tool call %s may have reached the server; will retry", ctx.tool_call_id)
            else:  # it certainly never left: it does not count against the call's requests
                record["pushes"] = max(0, self._pushes(record) - 1)
            record.update(failures=failures, lease_until=now, next_poll_at=now + backoff)
            await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._requesting_ttl(record, now))
            raise self._interrupt(
                AuthorizationPollingInterrupt,
                ctx,
                record,
                next_check_at=now + backoff,
                retry_after=backoff,
                reason="transient_error",
            ) from None
        now = self.clock()
        record.update(
            state="pending",
            auth_req_id=response.auth_req_id,
            expires_at=now + response.expires_in,
            interval=response.interval,
            next_poll_at=now + self._poll_gap(response.interval, response.expires_in),
            failures=0,
            lease_until=None,
            requested_at=now,
        )
        await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._record_ttl(response.expires_in))
        raise self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=record["next_poll_at"])

    async def _check(
        self, ctx: ToolContext, key: str, record: dict[str, Any], arguments: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Poll once if due; return the stored credential record on approval, else raise.

        The poll is marked in the record before it is sent (`polling_since`) and unmarked by its answer. A
        mark found at the next check means a poll whose answer never arrived (its process died, or the
        answer was lost): the server may have handed the tokens to it and spent the request. If the server
        then says `invalid_grant`, the approval was lost, not refused: the user is asked once more.

        With a hand-off store (ping mode), the request is claimed there first, so this check and an alarm
        probe (`tools.ciba.probe`) never poll at once; an answer a probe received is taken from there
        instead of polling, and the claim is settled once the answer is stored."""
        now = self.clock()
        expires_at = float(record["expires_at"])
        next_poll_at = float(record.get("next_poll_at") or 0.0)
        past_deadline = now >= expires_at
        if not past_deadline and now < next_poll_at:
            raise self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=next_poll_at)
        interval = int(record.get("interval") or 5)
        answer_lost_before = record.get("polling_since") is not None
        handoff = self.options.handoff
        handed: Any = None
        if handoff is not None:
            claim = await self._claim_handoff(ctx)
            if claim.kind == "busy":  # a probe's poll is taking long: look again soon
                retry_at = min(float(claim.until or now), self.clock() + 1.0)
                raise self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=retry_at)
            handed = claim.answer
            answer_lost_before = answer_lost_before or claim.lost_before
        record["polling_since"] = now
        record["polls"] = int(record.get("polls") or 0) + 1
        await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._record_ttl_left(record, now))
        if handed is not None:
            result = handed
        else:
            metrics.CIBA_POLLS.inc(tool=self.tool.name)
            try:
                result = await self.client.poll(record["auth_req_id"], interval=interval)
            except CIBATransientError as exc:  # the mark stays, the claim says so: this answer may be lost
                if handoff is not None:
                    await handoff.lost(self.handoff_key(ctx))
                await self._poll_failed(ctx, key, record, exc, past_deadline)  # raises
            except CIBAError as exc:
                metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="error")
                await self.store.delete(PENDING_NAMESPACE, key)
                await self._settle(ctx)
                raise self._refusal(exc, ctx, record) from None
        record.pop("polling_since", None)  # answered
        after = self.clock()  # the server timed this poll on arrival: count the next interval from now
        if isinstance(result, Approved):
            stored = await self._approved(key, record, result, after)
            await self._settle(ctx)
            return stored
        try:
            await self._not_approved(ctx, key, record, arguments, result, past_deadline, answer_lost_before, after)
        except AsyncAuthorizationInterrupt:  # the answer is recorded (a new check time, or the call's end)
            await self._settle(ctx)
            raise

    async def _claim_handoff(self, ctx: ToolContext) -> Any:
        """Claim this call's request in the hand-off store. A probe polling it right now answers within
        milliseconds as a rule (it then keeps the answer for this check), so wait for it a little."""
        deadline = self.clock() + HANDOFF_WAIT_SECONDS
        while True:
            claim = await self.options.handoff.claim(self.handoff_key(ctx), lease=self._lease(), by="thread")
            if claim.kind != "busy" or self.clock() >= deadline:
                return claim
            await asyncio.sleep(0.02)

    async def _settle(self, ctx: ToolContext) -> None:
        if self.options.handoff is not None:
            await self.options.handoff.settle(self.handoff_key(ctx))

    async def _poll_failed(
        self, ctx: ToolContext, key: str, record: dict[str, Any], exc: CIBATransientError, past_deadline: bool
    ) -> NoReturn:
        """An unreachable or failing server: back off (its `Retry-After` wins), never a denial; past the
        request's deadline, it has expired."""
        if past_deadline:
            await self.store.delete(PENDING_NAMESPACE, key)
            raise self._interrupt(AuthorizationRequestExpiredInterrupt, ctx, record) from None
        failures = int(record.get("failures") or 0) + 1
        backoff = max(self._backoff(failures, int(record.get("interval") or 5)), exc.retry_after or 0.0)
        after = self.clock()
        record.update(failures=failures, next_poll_at=after + backoff)
        await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._record_ttl_left(record, after))
        raise self._interrupt(
            AuthorizationPollingInterrupt,
            ctx,
            record,
            next_check_at=after + backoff,
            retry_after=backoff,
            reason="transient_error",
        ) from None

    async def _approved(self, key: str, record: dict[str, Any], result: Approved, after: float) -> dict[str, Any]:
        """Store the credential (first, then drop the pending record: a crash in between still finds it)."""
        metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="approved")
        metrics.POLLS_PER_APPROVAL.observe(record["polls"], tool=self.tool.name)
        # when the user approved, as near as this side knows: the ping, or the last poll still pending
        self._approved_about[key] = float(record.get("pinged_at") or record.get("last_pending_at") or after)
        credentials = result.tokens.to_credentials(received_at=after)
        if not credentials.scope:  # RFC 6749 5.1: no scope in the answer means the requested one
            credentials = credentials.model_copy(update={"scope": ["openid", *self.options.scopes]})
        if credentials.expires_at is None:  # no `expires_in`: usable for a default time, not forever
            credentials = credentials.model_copy(update={"expires_at": after + DEFAULT_CREDENTIAL_TTL})
        stored = {
            "credentials": credentials.model_dump(mode="json"),
            "arguments_sha256": record.get("arguments_sha256"),
        }
        # No row lifetime: the token's own `expires_at` decides (`_bound_credentials`), so an expiry during the
        # tool's retries, or a cluster down for longer than the token lives, ends the call as "expired" and
        # never as a fresh request to the user.
        await self.store.put(CREDENTIALS_NAMESPACE, key, stored, ttl=None)
        await self.store.delete(PENDING_NAMESPACE, key)
        return stored

    async def _not_approved(
        self,
        ctx: ToolContext,
        key: str,
        record: dict[str, Any],
        arguments: Mapping[str, Any],
        result: Any,
        past_deadline: bool,
        answer_lost_before: bool,
        after: float,
    ) -> NoReturn:
        """Every answer but an approval raises: a terminal outcome, or when to check next."""
        interval = int(record.get("interval") or 5)
        if isinstance(result, AccessDenied):
            await self.store.delete(PENDING_NAMESPACE, key)
            # Auth0 also answers access_denied for an expired request: past the deadline, say expired.
            kind = AuthorizationRequestExpiredInterrupt if past_deadline else AccessDeniedInterrupt
            metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="expired" if past_deadline else "denied")
            raise self._interrupt(kind, ctx, record)
        if isinstance(result, ExpiredToken):
            metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="expired")
            await self.store.delete(PENDING_NAMESPACE, key)
            raise self._interrupt(AuthorizationRequestExpiredInterrupt, ctx, record)
        if isinstance(result, InvalidGrant):
            lost = answer_lost_before and self._pushes(record) < MAX_REQUESTS_PER_CALL
            metrics.CIBA_REQUESTS.inc(tool=self.tool.name, outcome="lost" if lost else "error")
            if lost:
                await self._ask_again(ctx, key, record, arguments)  # raises
            await self.store.delete(PENDING_NAMESPACE, key)
            raise self._interrupt(InvalidGrantInterrupt, ctx, record)
        if past_deadline:  # still pending by the server's account, but our deadline has passed
            await self.store.delete(PENDING_NAMESPACE, key)
            raise self._interrupt(AuthorizationRequestExpiredInterrupt, ctx, record)
        if isinstance(result, SlowDown):
            record.update(interval=result.interval, next_poll_at=after + result.wait, failures=0)
            await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._record_ttl_left(record, after))
            raise self._interrupt(
                AuthorizationPollingInterrupt,
                ctx,
                record,
                next_check_at=record["next_poll_at"],
                retry_after=result.wait,
                reason="slow_down",
            )
        assert isinstance(result, Pending)
        lifetime = float(record["expires_at"]) - float(record.get("requested_at") or after)
        record.update(next_poll_at=after + self._poll_gap(interval, lifetime), failures=0, last_pending_at=after)
        await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._record_ttl_left(record, after))
        raise self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=record["next_poll_at"])

    def _poll_gap(self, interval: float, lifetime: float) -> float:
        """Seconds to the next check: the interval; in ping mode, where the ping says when, only a safety
        net for a lost ping (`ping_check_gap`)."""
        if self.options.delivery_mode != "ping":
            return float(interval)
        return ping_check_gap(interval, lifetime, self.options.ping_fallback)

    def _record_ttl_left(self, record: dict[str, Any], now: float) -> float:
        return max(1.0, float(record["expires_at"]) - now) + self.options.pending_retention

    def _backoff(self, failures: int, interval: float) -> float:
        first, most = self.options.retry_backoff
        return exponential_delay(failures, first, most, floor=float(interval))

    # -- interrupts ----------------------------------------------------------------------------------
    def _interrupt(
        self,
        kind: type[AsyncAuthorizationInterrupt],
        ctx: ToolContext,
        record: Mapping[str, Any] | None,
        message: str | None = None,
        **extra: Any,
    ) -> AsyncAuthorizationInterrupt:
        record = record or {}
        fields: dict[str, Any] = {
            "tool_name": self.tool.name,
            "tool_call_id": ctx.tool_call_id,
            "thread_id": ctx.thread_id,
            "expires_at": record.get("expires_at"),
            "interval": record.get("interval"),
            "binding_message": record.get("binding_message"),
            "scopes": list(record.get("scopes") or self.options.scopes),
        }
        fields.update(extra)
        return kind(message, **fields)

    def _refusal(
        self, exc: CIBAError, ctx: ToolContext, record: Mapping[str, Any] | None
    ) -> AsyncAuthorizationInterrupt:
        """Map a refused request to its interrupt; only an error that says so means "no push device"."""
        log.warning("CIBA authorization for tool call %s refused: %s", ctx.tool_call_id, exc.error)
        if _NO_PUSH_RE.search(exc.description or ""):
            return self._interrupt(UserDoesNotHavePushNotificationsInterrupt, ctx, record)
        if exc.error == "access_denied":
            return self._interrupt(AccessDeniedInterrupt, ctx, record)
        detail = f": {exc.description}" if exc.description else ""
        return self._interrupt(
            AuthorizationRequestFailedInterrupt,
            ctx,
            record,
            f"The authorization request was refused ({exc.error}){detail}",
            error=exc.error,
        )
