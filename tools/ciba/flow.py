"""The CIBA flow of one wrapped tool's calls: every state and transition (`tools.ciba.record` names them).

`CibaFlow.step(ctx, arguments)` moves one tool call one step and says what it found, without raising
for the flow's own outcomes (`Step`: `Ready` with credentials, `Replay` an outcome, `Waiting` until a
time, `Ended`); `tools.ciba.confirmation` runs the tool, and raises the interrupt, at the edge. The other
transitions come from outside a step: a ping (`accept_ping`), a withdrawal (`withdraw`), the tool's own
end (`consume`, `mark_outcome_unknown`), and a sleeping thread's probe (`probe_payload`).

    step: credential row?  spent -> Replay | approved for other arguments -> Ended | expired -> Replay
                                  | valid -> Ready
          no record        create it (one writer wins) -> send the request          (_send_request)
          requesting       lease held -> Waiting | out of requests -> Ended | claim the next attempt
                           and send again                                          (_resume_requesting)
          pending          not due -> Waiting | claim (hand-off) -> poll once       (_check)
    send:  accepted -> pending, Waiting | refused -> Ended | failed -> requesting, Waiting (backoff)
    poll:  approved -> credential stored, pending dropped -> Ready | pending / slow_down -> Waiting
           | denied, expired, invalid grant -> Ended | invalid grant after a lost answer -> requesting
           (ask again, within `MAX_REQUESTS_PER_CALL`) | unreachable -> Waiting (backoff), past the
           deadline Ended (expired)

The guarantees (one push per call, the cap on resends, an approval spent once, bound to the arguments it
was given for) are in `tools.ciba.confirmation`'s docstring.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from runtime.backoff import exponential_delay
from tools.base import ToolContext, ToolError
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
from tools.ciba.credentials_context import CIBACredentials
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
    ATTEMPTS_NAMESPACE,
    CREDENTIALS_NAMESPACE,
    DEFAULT_CREDENTIAL_TTL,
    MAX_REQUESTS_PER_CALL,
    PENDING_NAMESPACE,
    PINGS_NAMESPACE,
    AsyncConfirmationOptions,
    RequestParams,
    SpentOutcome,
    arguments_digest,
    ping_check_gap,
    resolve,
    unknown_outcome_text,
)
from tools.ciba.ping import new_notification_token, token_digest, token_matches
from tools.ciba.probe import ProbeRequest, seal_request
from tools.ciba.record import CallState, Ended, PendingRecord, Ready, Replay, Step, Waiting, step_of

log = logging.getLogger(__name__)

HANDOFF_WAIT_SECONDS = 2.0
"""How long a check waits for an alarm probe's poll of the same request before it looks again later."""

_NO_PUSH_RE = re.compile(r"push|enrol|authenticator|guardian", re.IGNORECASE)


class CibaFlow:
    """The states and transitions of the calls of one wrapped tool (see the module docstring)."""

    def __init__(
        self,
        tool_name: str,
        options: AsyncConfirmationOptions,
        *,
        store: CredentialStore,
        client: CIBAClient,
        clock: Callable[[], float],
    ) -> None:
        self.tool_name = tool_name
        self.options = options
        self.store = store
        self.client = client
        self.clock = clock
        # One lock per tool call key: steps of the same tool call in this process run one at a time, so a
        # resumer and a retry never both poll, both run the tool, or both send a request. Across processes
        # the store's create_if_absent is the guard.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.approved_about: dict[str, float] = {}
        """Per call key collected here: about when the user approved (for the approval-to-resume metric)."""

    def key_for(self, ctx: ToolContext) -> str:
        return f"{ctx.thread_id}:{self.tool_name}:{ctx.tool_call_id}"

    def handoff_key(self, ctx: ToolContext) -> str:
        """This call's row in the root's hand-off store (the agent's name makes it unique in the root)."""
        return f"{ctx.agent_name}/{self.key_for(ctx)}"

    @asynccontextmanager
    async def hold(self, ctx: ToolContext) -> AsyncIterator[str]:
        """This call to oneself in this process (see `_locks`); yields its key."""
        key = self.key_for(ctx)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            yield key

    # -- the step ------------------------------------------------------------------------------------
    async def step(self, ctx: ToolContext, key: str, arguments: Mapping[str, Any]) -> Step:
        """One step of this call (inside `hold`): what its state is now, moved on where it is due."""
        for _ in range(3):  # re-read after losing a race; more than twice means another writer churns
            stored = await self.store.get(CREDENTIALS_NAMESPACE, key)
            if stored is not None:
                return await self._credential_step(ctx, key, stored, arguments)
            if await self.store.exists(CREDENTIALS_NAMESPACE, key):
                return await self._unreadable(ctx, key)
            record = PendingRecord.read(await self.store.get(PENDING_NAMESPACE, key))
            if record is None:
                params = await self._params(ctx, arguments)
                if isinstance(params, Ended):
                    return params
                fresh = self._new_record(ctx, params, self.clock())
                if await self.store.create_if_absent(PENDING_NAMESPACE, key, fresh.stored(), ttl=self._record_ttl()):
                    return await self._send_request(ctx, key, params, fresh)
                if await self.store.get(PENDING_NAMESPACE, key) is None and await self.store.exists(
                    PENDING_NAMESPACE, key
                ):
                    return await self._unreadable(ctx, key)
                continue
            if record.state is CallState.REQUESTING:
                step = await self._resume_requesting(ctx, key, arguments, record)
                if step is None:  # another caller claimed the resend: look again
                    continue
                return step
            return await self._check(ctx, key, record, arguments)
        return Waiting(self._interrupt(AuthorizationPendingInterrupt, ctx, None, next_check_at=self.clock() + 1.0))

    async def _credential_step(
        self, ctx: ToolContext, key: str, stored: Mapping[str, Any], arguments: Mapping[str, Any]
    ) -> Step:
        """The credential row: spent (its outcome), or approved, if for these very arguments and still valid.

        The user approved one action (the binding message shows it); a re-run of the tool call with other
        arguments must not spend that approval. Refused, the credential is dropped. One that expired while
        the tool was being retried ends the call (ask again)."""
        if stored.get("done"):
            return Replay(SpentOutcome(stored.get("result"), stored.get("error")))
        approved_for = stored.get("arguments_sha256")
        if approved_for is not None and approved_for != arguments_digest(arguments):
            await self.store.delete(CREDENTIALS_NAMESPACE, key)
            log.warning("tool call %s was re-run with other arguments than approved", ctx.tool_call_id)
            return step_of(
                self._interrupt(
                    AuthorizationRequestFailedInterrupt,
                    ctx,
                    None,
                    "The approval was given for other arguments of this tool call; it was not used",
                    error="arguments_changed",
                )
            )
        credentials = CIBACredentials.model_validate(stored.get("credentials", stored))
        if credentials.expires_at is not None and credentials.expires_at <= self.clock():
            if stored.get("outcome_unknown"):  # it may have happened: a repeat could do it twice
                await self.consume(key, result=unknown_outcome_text(self.tool_name))
                return Replay(SpentOutcome(unknown_outcome_text(self.tool_name), None))
            error = f"the approval expired before {self.tool_name} could complete; please ask again"
            await self.consume(key, error=error)
            return Replay(SpentOutcome(None, error))
        return Ready(credentials)

    async def _unreadable(self, ctx: ToolContext, key: str) -> Replay:
        """This call's records exist but cannot be decrypted (`AUTH0_SESSION_ENCRYPTION_KEY` changed): end
        the call with a clear result instead of waiting forever, and leave no unreadable row behind. It does
        not ask the user again by itself: they may have approved already, and a second push for the same
        purchase would be a surprise; the model tells them to ask again."""
        log.warning("the CIBA records of tool call %s cannot be decrypted (was the key changed?)", ctx.tool_call_id)
        await self.store.delete(PENDING_NAMESPACE, key)
        error = (
            f"the approval for {self.tool_name} was lost: it can no longer be read (the encryption key "
            "changed); please ask again"
        )
        await self.consume(key, error=error)
        return Replay(SpentOutcome(None, error))

    # -- requesting ----------------------------------------------------------------------------------
    async def _params(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> RequestParams | Ended:
        user_id = await resolve(self.options.user_id, arguments) if self.options.user_id is not None else None
        user_id = user_id or ctx.owner
        if not isinstance(user_id, str) or not user_id:
            raise ToolError(f"{self.tool_name} needs the user's approval, but the thread has no owner to ask")
        binding_message = await resolve(self.options.binding_message, arguments)
        details = await resolve(self.options.authorization_details, arguments)
        try:
            validate_binding_message(binding_message)
        except InvalidBindingMessage as exc:  # refused before any record or request exists
            return Ended(self._refusal(exc, ctx, None, binding_message=str(binding_message)[:80]))
        return RequestParams(
            user_id=user_id,
            binding_message=binding_message,
            authorization_details=details,
            arguments_sha256=arguments_digest(arguments),
        )

    def _new_record(self, ctx: ToolContext, params: RequestParams, now: float) -> PendingRecord:
        return PendingRecord(
            state=CallState.REQUESTING,
            lease_until=now + self._lease(),
            binding_message=params.binding_message,
            arguments_sha256=params.arguments_sha256,
            scopes=list(self.options.scopes),
            audience=self.options.audience,
            tool_name=self.tool_name,
            tool_call_id=ctx.tool_call_id,
            thread_id=ctx.thread_id,
            created_at=now,
        )

    async def _send_request(self, ctx: ToolContext, key: str, params: RequestParams, record: PendingRecord) -> Step:
        """requesting -> pending (accepted), ended (refused), or requesting with a backoff (failed)."""
        notification_token = None
        if self.options.delivery_mode == "ping" and self.options.ping_key:
            notification_token = new_notification_token(self.options.ping_key, ctx.thread_id, ctx.tool_call_id)
            record.notification_token_sha256 = token_digest(notification_token)
            record.pinged_at = None
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
            metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="error")
            await self.store.delete(PENDING_NAMESPACE, key)
            return step_of(self._refusal(exc, ctx, record))
        except CIBATransientError as exc:
            now = self.clock()
            failures = record.failures + 1
            backoff = max(self._backoff(failures, 0.0), exc.retry_after or 0.0)  # the server's Retry-After wins
            if exc.maybe_sent:
                log.warning("CIBA request for tool call %s may have reached the server; will retry", ctx.tool_call_id)
            else:  # it certainly never left: it does not count against the call's requests
                record.pushes = max(0, record.pushes - 1)
            record.failures, record.lease_until, record.next_poll_at = failures, now, now + backoff
            await self._put(key, record, ttl=self._requesting_ttl(record, now))
            return self._backing_off(ctx, record, now + backoff, backoff)
        now = self.clock()
        record.state, record.auth_req_id = CallState.PENDING, response.auth_req_id
        record.expires_at, record.interval, record.requested_at = now + response.expires_in, response.interval, now
        record.next_poll_at = now + self._poll_gap(response.interval, response.expires_in)
        record.failures, record.lease_until = 0, None
        await self._put(key, record, ttl=self._record_ttl(response.expires_in))
        return Waiting(self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=record.next_poll_at))

    async def _resume_requesting(
        self, ctx: ToolContext, key: str, arguments: Mapping[str, Any], record: PendingRecord
    ) -> Step | None:
        """A record without `auth_req_id`: wait while its sender may still be at work, else take over (within
        the per-call cap on requests, and the first request's lifetime). None: another caller claimed it."""
        now = self.clock()
        wait_until = max(record.lease_until or 0.0, record.next_poll_at or 0.0)
        if now < wait_until:
            return Waiting(self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=wait_until))
        out = await self._out_of_requests(ctx, key, record, now)
        if out is not None:
            return out
        attempt = record.attempt + 1
        params = await self._params(ctx, arguments)
        if isinstance(params, Ended):
            return params
        claimed = await self.store.create_if_absent(
            ATTEMPTS_NAMESPACE, f"{key}#{attempt}", {"at": now}, ttl=self._requesting_ttl(record, now)
        )
        if not claimed:
            await self._skip_if_claimer_died(key, record, attempt, now)
            return None
        if not record.failures:
            log.warning(
                "CIBA request for tool call %s was left half-sent (the process stopped mid-request?); sending it again",
                ctx.tool_call_id,
            )
        record.attempt, record.pushes, record.lease_until = attempt, record.pushes + 1, now + self._lease()
        record.binding_message, record.arguments_sha256 = params.binding_message, params.arguments_sha256
        await self._put(key, record, ttl=self._requesting_ttl(record, now))
        return await self._send_request(ctx, key, params, record)

    async def _skip_if_claimer_died(self, key: str, record: PendingRecord, attempt: int, now: float) -> None:
        """Another caller claimed `attempt`. It records the attempt in the pending record before it sends, so
        a claim older than a lease while the record still shows the attempt before it means the claimer died
        in between, having sent nothing: record the attempt as passed, so that the next check claims the one
        after it (without this, every later check would see the claim taken and wait for a sender that is
        gone, forever)."""
        claim = await self.store.get(ATTEMPTS_NAMESPACE, f"{key}#{attempt}")
        if claim is None or now < float(claim.get("at") or 0.0) + self._lease():
            return  # its claimer may be sending the request now
        log.warning(
            "CIBA tool call %s: attempt %d was claimed but never sent; skipping it", record.tool_call_id, attempt
        )
        skipped = record.model_copy(update={"attempt": attempt})
        await self._put(key, skipped, ttl=self._requesting_ttl(record, now))

    async def _out_of_requests(self, ctx: ToolContext, key: str, record: PendingRecord, now: float) -> Ended | None:
        """Before another request for this call: end the call (a terminal, clear result) if it has had its
        `MAX_REQUESTS_PER_CALL` requests that may have reached the user's device, or if the first request's
        lifetime has passed without one being accepted. Otherwise a slow provider would push the user's phone
        again at every check, for as long as it stays slow."""
        first_deadline = (record.created_at or now) + self.options.requested_expiry
        if record.pushes < MAX_REQUESTS_PER_CALL and now < first_deadline:
            return None
        metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="error")
        await self.store.delete(PENDING_NAMESPACE, key)
        log.warning(
            "CIBA tool call %s: no request accepted after %d sent; ending the call", ctx.tool_call_id, record.pushes
        )
        return Ended(
            self._interrupt(
                AuthorizationRequestFailedInterrupt,
                ctx,
                record,
                f"The approval request for {self.tool_name} could not be completed: the authorization server did "
                f"not answer in time ({record.pushes} request(s) sent, the last ones may have reached the user's "
                "device). Nothing was done; any approval still shown on the device will not be used. "
                "Ask again later.",
                error="too_many_requests",
            )
        )

    async def _ask_again(self, ctx: ToolContext, key: str, record: PendingRecord, arguments: Mapping[str, Any]) -> Step:
        """The user approved, but the tokens went to a poll whose answer was lost and the server has spent
        the request: send a new one for the same call (the user approves once more) instead of failing a
        purchase they approved."""
        log.warning(
            "the approval for tool call %s was lost with the answer that carried it; asking the user again",
            ctx.tool_call_id,
        )
        params = await self._params(ctx, arguments)
        if isinstance(params, Ended):
            return params
        now = self.clock()
        again = record.model_copy(
            update={
                "state": CallState.REQUESTING,
                "attempt": record.attempt + 1,
                "pushes": record.pushes + 1,
                "created_at": now,  # a new request: the user has its lifetime to answer it
                "auth_req_id": None,
                "lease_until": now + self._lease(),
                "next_poll_at": None,
                "failures": 0,
                "binding_message": params.binding_message,
                "arguments_sha256": params.arguments_sha256,
            }
        )
        await self._put(key, again, ttl=self._requesting_ttl(again, now))
        return await self._send_request(ctx, key, params, again)

    # -- pending: the checks -------------------------------------------------------------------------
    async def _check(self, ctx: ToolContext, key: str, record: PendingRecord, arguments: Mapping[str, Any]) -> Step:
        """Poll once if due, and move the call on by the answer.

        The poll is marked in the record before it is sent (`polling_since`) and unmarked by its answer. A
        mark found at the next check means a poll whose answer never arrived (its process died, or the
        answer was lost): the server may have handed the tokens to it and spent the request. If the server
        then says `invalid_grant`, the approval was lost, not refused: the user is asked once more.

        With a hand-off store (ping mode), the request is claimed there first, so this check and an alarm
        probe (`tools.ciba.probe`) never poll at once; an answer a probe received is taken from there
        instead of polling, and the claim is settled once the answer is stored."""
        now = self.clock()
        assert record.expires_at is not None and record.auth_req_id is not None
        past_deadline = now >= record.expires_at
        if not past_deadline and now < (record.next_poll_at or 0.0):
            return Waiting(
                self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=record.next_poll_at)
            )
        answer_lost_before = record.polling_since is not None
        handoff = self.options.handoff
        handed: Any = None
        if handoff is not None:
            claim = await self._claim_handoff(ctx)
            if claim.kind == "busy":  # a probe's poll is taking long: look again soon
                retry_at = min(float(claim.until or now), self.clock() + 1.0)
                return Waiting(self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=retry_at))
            handed = claim.answer
            answer_lost_before = answer_lost_before or claim.lost_before
        record.polling_since, record.polls = now, record.polls + 1
        await self._put(key, record, ttl=self._record_ttl_left(record, now))
        if handed is not None:
            result = handed
        else:
            metrics.CIBA_POLLS.inc(tool=self.tool_name)
            try:
                result = await self.client.poll(record.auth_req_id, interval=record.poll_interval)
            except CIBATransientError as exc:  # the mark stays, the claim says so: this answer may be lost
                if handoff is not None:
                    await handoff.lost(self.handoff_key(ctx))
                return await self._poll_failed(ctx, key, record, exc, past_deadline)
            except CIBAError as exc:
                metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="error")
                await self.store.delete(PENDING_NAMESPACE, key)
                await self.settle(ctx)
                return step_of(self._refusal(exc, ctx, record))
        record.polling_since = None  # answered
        after = self.clock()  # the server timed this poll on arrival: count the next interval from now
        if isinstance(result, Approved):
            stored = await self._approved(key, record, result, after)
            await self.settle(ctx)
            return await self._credential_step(ctx, key, stored, arguments)
        step = await self._not_approved(ctx, key, record, arguments, result, past_deadline, answer_lost_before, after)
        await self.settle(ctx)  # the answer is recorded (a new check time, or the call's end)
        return step

    async def _claim_handoff(self, ctx: ToolContext) -> Any:
        """Claim this call's request in the hand-off store. A probe polling it right now answers within
        milliseconds as a rule (it then keeps the answer for this check), so wait for it a little."""
        deadline = self.clock() + HANDOFF_WAIT_SECONDS
        while True:
            claim = await self.options.handoff.claim(self.handoff_key(ctx), lease=self._lease(), by="thread")
            if claim.kind != "busy" or self.clock() >= deadline:
                return claim
            await asyncio.sleep(0.02)

    async def settle(self, ctx: ToolContext) -> None:
        """This call's row in the hand-off store is done with (its answer, if a probe kept one, goes too)."""
        if self.options.handoff is not None:
            await self.options.handoff.settle(self.handoff_key(ctx))

    async def _poll_failed(
        self, ctx: ToolContext, key: str, record: PendingRecord, exc: CIBATransientError, past_deadline: bool
    ) -> Step:
        """An unreachable or failing server: back off (its `Retry-After` wins), never a denial; past the
        request's deadline, it has expired."""
        if past_deadline:
            await self.store.delete(PENDING_NAMESPACE, key)
            return step_of(self._interrupt(AuthorizationRequestExpiredInterrupt, ctx, record))
        failures = record.failures + 1
        backoff = max(self._backoff(failures, record.poll_interval), exc.retry_after or 0.0)
        after = self.clock()
        record.failures, record.next_poll_at = failures, after + backoff
        await self._put(key, record, ttl=self._record_ttl_left(record, after))
        return self._backing_off(ctx, record, after + backoff, backoff)

    async def _approved(self, key: str, record: PendingRecord, result: Approved, after: float) -> dict[str, Any]:
        """pending -> approved: store the credential first, then drop the pending record (a crash in between
        still finds the credential)."""
        metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="approved")
        metrics.POLLS_PER_APPROVAL.observe(record.polls, tool=self.tool_name)
        # when the user approved, as near as this side knows: the ping, or the last poll still pending
        self.approved_about[key] = record.pinged_at or record.last_pending_at or after
        credentials = result.tokens.to_credentials(received_at=after)
        if not credentials.scope:  # RFC 6749 5.1: no scope in the answer means the requested one
            credentials = credentials.model_copy(update={"scope": ["openid", *self.options.scopes]})
        if credentials.expires_at is None:  # no `expires_in`: usable for a default time, not forever
            credentials = credentials.model_copy(update={"expires_at": after + DEFAULT_CREDENTIAL_TTL})
        stored = {"credentials": credentials.model_dump(mode="json"), "arguments_sha256": record.arguments_sha256}
        # No row lifetime: the token's own `expires_at` decides (`_credential_step`), so an expiry during the
        # tool's retries, or a cluster down for longer than the token lives, ends the call as "expired" and
        # never as a fresh request to the user.
        await self.store.put(CREDENTIALS_NAMESPACE, key, stored, ttl=None)
        await self.store.delete(PENDING_NAMESPACE, key)
        return stored

    async def _not_approved(
        self,
        ctx: ToolContext,
        key: str,
        record: PendingRecord,
        arguments: Mapping[str, Any],
        result: Any,
        past_deadline: bool,
        answer_lost_before: bool,
        after: float,
    ) -> Step:
        """Every answer but an approval: a terminal outcome, asking again, or when to check next."""
        if isinstance(result, AccessDenied):
            await self.store.delete(PENDING_NAMESPACE, key)
            # Auth0 also answers access_denied for an expired request: past the deadline, say expired.
            kind = AuthorizationRequestExpiredInterrupt if past_deadline else AccessDeniedInterrupt
            metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="expired" if past_deadline else "denied")
            return step_of(self._interrupt(kind, ctx, record))
        if isinstance(result, ExpiredToken):
            metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="expired")
            await self.store.delete(PENDING_NAMESPACE, key)
            return step_of(self._interrupt(AuthorizationRequestExpiredInterrupt, ctx, record))
        if isinstance(result, InvalidGrant):
            lost = answer_lost_before and record.pushes < MAX_REQUESTS_PER_CALL
            metrics.CIBA_REQUESTS.inc(tool=self.tool_name, outcome="lost" if lost else "error")
            if lost:
                return await self._ask_again(ctx, key, record, arguments)
            await self.store.delete(PENDING_NAMESPACE, key)
            return step_of(self._interrupt(InvalidGrantInterrupt, ctx, record))
        if past_deadline:  # still pending by the server's account, but our deadline has passed
            await self.store.delete(PENDING_NAMESPACE, key)
            return step_of(self._interrupt(AuthorizationRequestExpiredInterrupt, ctx, record))
        if isinstance(result, SlowDown):
            record.interval, record.next_poll_at, record.failures = result.interval, after + result.wait, 0
            await self._put(key, record, ttl=self._record_ttl_left(record, after))
            return Waiting(
                self._interrupt(
                    AuthorizationPollingInterrupt,
                    ctx,
                    record,
                    next_check_at=record.next_poll_at,
                    retry_after=result.wait,
                    reason="slow_down",
                )
            )
        assert isinstance(result, Pending)
        assert record.expires_at is not None
        lifetime = record.expires_at - (record.requested_at or after)
        record.next_poll_at = after + self._poll_gap(record.poll_interval, lifetime)
        record.failures, record.last_pending_at = 0, after
        await self._put(key, record, ttl=self._record_ttl_left(record, after))
        return Waiting(self._interrupt(AuthorizationPendingInterrupt, ctx, record, next_check_at=record.next_poll_at))

    # -- transitions from outside a step -------------------------------------------------------------
    async def consume(self, key: str, *, result: Any = None, error: str | None = None) -> None:
        """approved -> spent: replace the credential by the call's outcome (one row, one write): the token is
        gone, and a re-run after a crash gets the outcome back without running the tool or asking again.

        The outcome never expires: a re-run may come any time before the agent records the result (after a
        cluster was down for a day), and one that found no row would ask the user again. It is one small row
        per approved call, kept like the call's result in the thread."""
        if not isinstance(result, str | int | float | bool | list | dict | type(None)):
            result = str(result)
        outcome = {"done": True, "result": result, "error": error}
        await self.store.put(CREDENTIALS_NAMESPACE, key, outcome, ttl=None)

    async def mark_outcome_unknown(self, key: str) -> None:
        """The tool may have had its effect with this credential: should the credential expire before
        anyone finds out, the call must end as "unknown", never as "expired, ask again"."""
        stored = await self.store.get(CREDENTIALS_NAMESPACE, key)
        if stored is not None and not stored.get("done") and not stored.get("outcome_unknown"):
            await self.store.put(CREDENTIALS_NAMESPACE, key, {**stored, "outcome_unknown": True}, ttl=None)

    async def withdraw(self, ctx: ToolContext, outcome: str) -> bool:
        """Any state but spent -> spent with `outcome`, in place of the pending request and of the credential
        if the approval came already (the token is spent unused), so no later check, ping or re-run runs the
        tool. False, changing nothing, if the tool already ran (or may have: its outcome is unknown)."""
        async with self.hold(ctx) as key:
            stored = await self.store.get(CREDENTIALS_NAMESPACE, key)
            if stored is not None and (stored.get("done") or stored.get("outcome_unknown")):
                return False
            await self.consume(key, result=outcome)
            await self.store.delete(PENDING_NAMESPACE, key)
            await self.settle(ctx)  # an answer a probe kept for it (a token, maybe) goes too
            return True

    async def accept_ping(self, ctx: ToolContext, token: str, auth_req_id: str | None = None) -> bool:
        """pending -> pending, due now: if `token` is the one its pending request carries (and `auth_req_id`,
        if given, is its request), make the next check due now and return True. A ping never approves
        anything by itself: the check polls the token endpoint. Anything else, a second ping included, is
        False."""
        async with self.hold(ctx) as key:
            record = PendingRecord.read(await self.store.get(PENDING_NAMESPACE, key))
            if record is None or record.state is not CallState.PENDING or record.pinged_at:
                return False
            if not token_matches(token, record.notification_token_sha256):
                return False
            if auth_req_id is not None and not hmac.compare_digest(str(record.auth_req_id), auth_req_id):
                return False
            if not await self._first_ping(token):
                return False
            now = self.clock()
            record.pinged_at = record.next_poll_at = now
            await self._put(key, record, ttl=self._record_ttl_left(record, now))
            return True

    async def accept_late_ping(self, ctx: ToolContext, token: str) -> bool:
        """A ping for this call after a check already took the user's decision (the ping woke its thread,
        whose overdue check ran first): nothing to do, and True the first time this token comes. The caller
        has checked that the token was minted for this call (its MAC)."""
        async with self.hold(ctx):
            return await self._first_ping(token)

    async def _first_ping(self, token: str) -> bool:
        """Whether this notification token is seen for the first time (each is accepted once)."""
        lifetime = float(self.options.requested_expiry) + self.options.pending_retention
        return await self.store.create_if_absent(PINGS_NAMESPACE, token_digest(token), True, ttl=lifetime)

    async def probe_payload(self, ctx: ToolContext) -> str | None:
        """What an alarm probe needs to check this call's request while its thread sleeps (sealed), or None
        if a probe cannot stand in for the check: not ping mode, no request out yet, or already pinged."""
        if self.options.handoff is None:
            return None
        record = PendingRecord.read(await self.store.get(PENDING_NAMESPACE, self.key_for(ctx)))
        if record is None or record.state is not CallState.PENDING or not record.auth_req_id:
            return None
        if record.pinged_at or record.expires_at is None:  # the ping came: the thread checks now, by itself
            return None
        request = ProbeRequest(
            handoff_key=self.handoff_key(ctx),
            auth_req_id=record.auth_req_id,
            expires_at=record.expires_at,
            requested_at=record.requested_at or record.expires_at - self.options.requested_expiry,
            interval=record.poll_interval,
            ping_fallback=self.options.ping_fallback,
            issuer=self.client.issuer,
            client_id=self.client.client_id,
        )
        return seal_request(request)

    # -- rules of time -------------------------------------------------------------------------------
    def _lease(self) -> float:
        """How long a request in flight may take before another caller may assume its sender died."""
        return self.client.max_request_seconds + 5.0

    def _poll_gap(self, interval: float, lifetime: float) -> float:
        """Seconds to the next check: the interval; in ping mode, where the ping says when, only a safety
        net for a lost ping (`ping_check_gap`)."""
        if self.options.delivery_mode != "ping":
            return float(interval)
        return ping_check_gap(interval, lifetime, self.options.ping_fallback)

    def _backoff(self, failures: int, interval: float) -> float:
        first, most = self.options.retry_backoff
        return exponential_delay(failures, first, most, floor=float(interval))

    def _record_ttl(self, expires_in: float | None = None) -> float:
        return float(expires_in or self.options.requested_expiry) + self.options.pending_retention

    def _record_ttl_left(self, record: PendingRecord, now: float) -> float:
        assert record.expires_at is not None
        return max(1.0, record.expires_at - now) + self.options.pending_retention

    def _requesting_ttl(self, record: PendingRecord, now: float) -> float:
        """A record still asking lives as long as its first request would have, never longer: a write
        does not extend it."""
        created = record.created_at or now
        return max(1.0, created + self.options.requested_expiry - now) + self.options.pending_retention

    async def _put(self, key: str, record: PendingRecord, *, ttl: float) -> None:
        await self.store.put(PENDING_NAMESPACE, key, record.stored(), ttl=ttl)

    # -- interrupts ----------------------------------------------------------------------------------
    def _backing_off(self, ctx: ToolContext, record: PendingRecord, next_check_at: float, backoff: float) -> Waiting:
        return Waiting(
            self._interrupt(
                AuthorizationPollingInterrupt,
                ctx,
                record,
                next_check_at=next_check_at,
                retry_after=backoff,
                reason="transient_error",
            )
        )

    def _interrupt(
        self,
        kind: type[AsyncAuthorizationInterrupt],
        ctx: ToolContext,
        record: PendingRecord | None,
        message: str | None = None,
        **extra: Any,
    ) -> AsyncAuthorizationInterrupt:
        fields: dict[str, Any] = {
            "tool_name": self.tool_name,
            "tool_call_id": ctx.tool_call_id,
            "thread_id": ctx.thread_id,
            "expires_at": record.expires_at if record else None,
            "interval": record.interval if record else None,
            "binding_message": record.binding_message if record else None,
            "scopes": list(record.scopes if record and record.scopes else self.options.scopes),
        }
        fields.update(extra)
        return kind(message, **fields)

    def _refusal(
        self, exc: CIBAError, ctx: ToolContext, record: PendingRecord | None, **extra: Any
    ) -> AsyncAuthorizationInterrupt:
        """Map a refused request to its interrupt; only an error that says so means "no push device"."""
        log.warning("CIBA authorization for tool call %s refused: %s", ctx.tool_call_id, exc.error)
        if _NO_PUSH_RE.search(exc.description or ""):
            return self._interrupt(UserDoesNotHavePushNotificationsInterrupt, ctx, record, **extra)
        if exc.error == "access_denied":
            return self._interrupt(AccessDeniedInterrupt, ctx, record, **extra)
        detail = f": {exc.description}" if exc.description else ""
        return self._interrupt(
            AuthorizationRequestFailedInterrupt,
            ctx,
            record,
            f"The authorization request was refused ({exc.error}){detail}",
            error=exc.error,
            **extra,
        )
