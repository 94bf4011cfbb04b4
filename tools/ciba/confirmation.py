"""`with_async_user_confirmation`: a tool that runs only after its user approved it on another device.

    buy_stock = with_async_user_confirmation(
        raw_buy_stock,
        user_id=thread_owner,                  # the chat agent passes a callable returning ctx.owner
        scopes=["stock:buy"],
        audience=settings.checkout_audience,
        binding_message=lambda ticker, quantity, **_: f"Buy {quantity} {ticker}",
        store=SQLiteCredentialStore(path, settings.require_encryption_key()),
        client=CIBAClient.from_settings(settings),
    )

Each call of the wrapped tool moves one tool call (key `"{thread_id}:{tool name}:{tool_call_id}"`) one step
through CIBA, never blocking on the user (this module holds the steps and the credential's use; sending
the request, polling and reading the answers is `tools.ciba.provider`):

1. An approved credential is stored for the call: run the tool inside `use_ciba_credentials(cred)` (the
   tool reads it with `get_ciba_credentials()`), then consume the credential: it is single use and bound
   to this one call and to the arguments it was approved for (a re-run with other arguments does not
   spend it). Consuming overwrites the token with the call's outcome in one write, so a crash before the
   agent recorded the result replays that outcome instead of asking the user again. If the tool raises
   `TransientToolError` (the checkout is down for a moment) the credential stays, so the agent's retry
   runs it again (the tool's side effect must therefore be idempotent by tool call id, as `buy_stock`'s
   Idempotency-Key is), until the token expires; any other failure is final and consumes it.
2. Nothing is pending: atomically create a pending record (`create_if_absent`), send the backchannel
   request, store `auth_req_id`, expiry, interval and next poll time, raise `AuthorizationPendingInterrupt`.
   Racing calls (same process or another one after a restart) lose the create and send nothing, so the
   user gets exactly one push per tool call. The exceptions, capped together at `MAX_REQUESTS_PER_CALL`
   requests that may have reached the device (`tools.ciba.resends`): a record left "requesting" without an
   `auth_req_id` after its lease ran out (the process died mid-request, or the answer was lost) is taken
   over by exactly one caller, which sends the request again; an approval lost with its poll's answer.
3. A request is pending: before `next_poll_at` raise `AuthorizationPendingInterrupt` without polling;
   otherwise poll exactly once. `slow_down` adds 5 s to the interval for every later poll and raises
   `AuthorizationPollingInterrupt`; an unreachable server backs off and raises the same (never a denial);
   approval stores the credential first, then drops the pending record, then runs step 1.
4. Terminal outcomes (denied, expired, invalid grant, no push device, request refused) delete the
   pending record and become the tool's result: what `on_unauthorized(interrupt, ctx)` returns, else
   "The user has denied the request" for a denial and the interrupt's message otherwise. Pending and
   polling interrupts always propagate to the agent (after `on_authorization_interrupt(interrupt, ctx)`).

Past the request's `expires_at` one last poll still happens, so an approval given at the last second is not
lost to clock skew; anything but an approval then ends as expired.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel

from tools.base import (
    OutcomeUnknownError,
    Tool,
    ToolContext,
    ToolError,
    TransientToolError,
    current_tool_context,
)
from tools.ciba import metrics
from tools.ciba.client import (
    CIBAClient,
)
from tools.ciba.credential_store import CredentialStore
from tools.ciba.credentials_context import (
    CIBACredentials,
    get_async_authorization_credentials,
    get_ciba_credentials,
    use_ciba_credentials,
)
from tools.ciba.interrupts import (
    AccessDeniedInterrupt,
    AsyncAuthorizationInterrupt,
    AuthorizationPendingInterrupt,
    AuthorizationRequestFailedInterrupt,
)
from tools.ciba.options import (
    CREDENTIALS_NAMESPACE,
    DENIED_TEXT,
    PENDING_NAMESPACE,
    PINGS_NAMESPACE,
    AsyncConfirmationOptions,
    InterruptCallback,
    Resolvable,
    SpentOutcome,
    arguments_digest,
    unknown_outcome_text,
)
from tools.ciba.ping import token_digest, token_matches
from tools.ciba.probe import PROBER, CibaHandoff, ProbeRequest, seal_request
from tools.ciba.provider import CibaRequests

log = logging.getLogger(__name__)


async def _call(callback: InterruptCallback, interrupt: AsyncAuthorizationInterrupt, ctx: ToolContext) -> Any:
    result = callback(interrupt, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


class AsyncUserConfirmation(CibaRequests):
    """The CIBA state machine for one wrapped tool (see the module docstring for the steps)."""

    def __init__(
        self,
        tool: Tool,
        options: AsyncConfirmationOptions,
        *,
        store: CredentialStore,
        client: CIBAClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not options.scopes:
            raise ValueError("with_async_user_confirmation needs at least one scope")
        if options.requested_expiry <= 0:
            raise ValueError("requested_expiry must be positive")
        self.tool = tool
        self.options = options
        self.store = store
        self.client = client
        self.clock = clock
        # One lock per tool call key: calls of the same tool call in this process run one at a time, so
        # a resumer and a retry never both poll, both run the tool, or both send a request. Across
        # processes the store's create_if_absent is the guard.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._approved_about: dict[str, float] = {}
        """Per call key collected here: about when the user approved (for the approval-to-resume metric)."""

    async def _consume(self, key: str, *, result: Any = None, error: str | None = None) -> None:
        """Replace the credential by the call's outcome (one row, one write): the token is gone, and a re-run
        after a crash gets the outcome back without running the tool or asking the user again.

        The outcome never expires: a re-run may come any time before the agent records the result (after a
        cluster was down for a day), and one that found no row would ask the user again. It is one small row
        per approved call, kept like the call's result in the thread."""
        if not isinstance(result, str | int | float | bool | list | dict | type(None)):
            result = str(result)
        outcome = {"done": True, "result": result, "error": error}
        await self.store.put(CREDENTIALS_NAMESPACE, key, outcome, ttl=None)

    async def _mark_outcome_unknown(self, key: str) -> None:
        """The tool may have had its effect with this credential: should the credential expire before
        anyone finds out, the call must end as "unknown", never as "expired, ask again"."""
        stored = await self.store.get(CREDENTIALS_NAMESPACE, key)
        if stored is not None and not stored.get("done") and not stored.get("outcome_unknown"):
            await self.store.put(CREDENTIALS_NAMESPACE, key, {**stored, "outcome_unknown": True}, ttl=None)

    def key_for(self, ctx: ToolContext) -> str:
        return f"{ctx.thread_id}:{self.tool.name}:{ctx.tool_call_id}"

    @asynccontextmanager
    async def _hold(self, key: str) -> Any:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        async with lock:
            yield

    # -- entry point ---------------------------------------------------------------------------------
    async def run(self, args: BaseModel, ctx: ToolContext, arguments: Mapping[str, Any]) -> Any:
        """One step for this tool call: the tool's result, a terminal outcome, or a raised interrupt."""
        key = self.key_for(ctx)
        async with self._hold(key):
            try:
                credentials = await self._obtain(ctx, key, arguments)
            except AsyncAuthorizationInterrupt as interrupt:
                if interrupt.terminal:
                    return await self._unauthorized(interrupt, ctx)
                await self._notify(interrupt, ctx)
                raise
            if isinstance(credentials, SpentOutcome):
                return credentials.replay()
            with use_ciba_credentials(credentials):
                try:
                    result = await self.tool.run(args, ctx)
                except OutcomeUnknownError:
                    await self._mark_outcome_unknown(key)
                    raise  # the credential stays: the agent runs this call again later, and it looks first
                except TransientToolError:
                    raise  # the credential stays: the agent runs this call again later
                except ToolError as exc:
                    await self._consume(key, error=str(exc))
                    raise
                except Exception as exc:
                    await self._consume(key, error=f"{self.tool.name} failed ({type(exc).__name__})")
                    raise
            await self._consume(key, result=result)
            approved_about = self._approved_about.pop(key, None)
            if approved_about is not None:
                metrics.APPROVAL_TO_RESUME_SECONDS.observe(self.clock() - approved_about, tool=self.tool.name)
            return result

    async def _notify(self, interrupt: AsyncAuthorizationInterrupt, ctx: ToolContext) -> None:
        callback = self.options.on_authorization_interrupt
        if callback is None:
            return
        try:
            await _call(callback, interrupt, ctx)
        except Exception:  # the interrupt still reaches the agent; a broken hook must not hide it
            log.exception("on_authorization_interrupt failed for tool call %s", ctx.tool_call_id)

    async def _unauthorized(self, interrupt: AsyncAuthorizationInterrupt, ctx: ToolContext) -> Any:
        if self.options.on_unauthorized is not None:
            return await _call(self.options.on_unauthorized, interrupt, ctx)
        return DENIED_TEXT if isinstance(interrupt, AccessDeniedInterrupt) else interrupt.message

    # -- the state machine ---------------------------------------------------------------------------
    async def _obtain(self, ctx: ToolContext, key: str, arguments: Mapping[str, Any]) -> CIBACredentials | SpentOutcome:
        """The approved credential for this call (or the outcome of its spent one), or raise the interrupt
        that says why not (yet)."""
        for _ in range(3):  # re-read after losing a race; more than twice means another writer churns
            stored = await self.store.get(CREDENTIALS_NAMESPACE, key)
            if stored is not None:
                return await self._bound_credentials(ctx, key, stored, arguments)
            if await self.store.exists(CREDENTIALS_NAMESPACE, key):
                return await self._lost(ctx, key)
            record = await self.store.get(PENDING_NAMESPACE, key)
            if record is None:
                params = await self._params(ctx, arguments)
                now = self.clock()
                fresh = self._new_record(ctx, params, now)
                if await self.store.create_if_absent(PENDING_NAMESPACE, key, fresh, ttl=self._record_ttl()):
                    await self._send_request(ctx, key, params, fresh)  # always raises
                if await self.store.get(PENDING_NAMESPACE, key) is None and await self.store.exists(
                    PENDING_NAMESPACE, key
                ):
                    return await self._lost(ctx, key)
                continue
            if record.get("state") == "requesting":
                await self._resume_requesting(ctx, key, arguments, record)  # raises unless it lost a race
                continue
            stored = await self._check(ctx, key, record, arguments)
            return await self._bound_credentials(ctx, key, stored, arguments)
        raise self._interrupt(AuthorizationPendingInterrupt, ctx, None, next_check_at=self.clock() + 1.0)

    async def _lost(self, ctx: ToolContext, key: str) -> SpentOutcome:
        """This call's records exist but cannot be decrypted (`AUTH0_SESSION_ENCRYPTION_KEY` changed): end
        the call with a clear result instead of waiting forever, and leave no unreadable row behind. It does
        not ask the user again by itself: they may have approved already, and a second push for the same
        purchase would be a surprise; the model tells them to ask again."""
        log.warning("the CIBA records of tool call %s cannot be decrypted (was the key changed?)", ctx.tool_call_id)
        await self.store.delete(PENDING_NAMESPACE, key)
        error = (
            f"the approval for {self.tool.name} was lost: it can no longer be read (the encryption key "
            "changed); please ask again"
        )
        await self._consume(key, error=error)
        return SpentOutcome(None, error)

    async def _bound_credentials(
        self, ctx: ToolContext, key: str, stored: Mapping[str, Any], arguments: Mapping[str, Any]
    ) -> CIBACredentials | SpentOutcome:
        """The stored credential, if it was approved for these very arguments and is still valid.

        The user approved one action (the binding message shows it); a re-run of the tool call with other
        arguments must not spend that approval. Refused, the credential is dropped. A spent credential is
        its outcome; one that expired while the tool was being retried ends the call (ask again)."""
        if stored.get("done"):
            return SpentOutcome(stored.get("result"), stored.get("error"))
        approved_for = stored.get("arguments_sha256")
        if approved_for is not None and approved_for != arguments_digest(arguments):
            await self.store.delete(CREDENTIALS_NAMESPACE, key)
            log.warning("tool call %s was re-run with other arguments than approved", ctx.tool_call_id)
            raise self._interrupt(
                AuthorizationRequestFailedInterrupt,
                ctx,
                None,
                "The approval was given for other arguments of this tool call; it was not used",
                error="arguments_changed",
            )
        credentials = CIBACredentials.model_validate(stored.get("credentials", stored))
        if credentials.expires_at is not None and credentials.expires_at <= self.clock():
            if stored.get("outcome_unknown"):  # it may have happened: a repeat could do it twice
                await self._consume(key, result=unknown_outcome_text(self.tool.name))
                return SpentOutcome(unknown_outcome_text(self.tool.name), None)
            error = f"the approval expired before {self.tool.name} could complete; please ask again"
            await self._consume(key, error=error)
            return SpentOutcome(None, error)
        return credentials

    async def withdraw(self, ctx: ToolContext, outcome: str) -> bool:
        """The user withdrew this call before it ran: `outcome` becomes its stored outcome in place of its
        pending request and of its credential, if the approval came already (the token is spent unused), so
        no later check, ping or re-run runs the tool. False, changing nothing, if the tool already ran (or
        may have: its outcome is unknown)."""
        key = self.key_for(ctx)
        async with self._hold(key):
            stored = await self.store.get(CREDENTIALS_NAMESPACE, key)
            if stored is not None and (stored.get("done") or stored.get("outcome_unknown")):
                return False
            await self._consume(key, result=outcome)
            await self.store.delete(PENDING_NAMESPACE, key)
            await self._settle(ctx)  # an answer a probe kept for it (a token, maybe) goes too
            return True

    async def accept_ping(self, ctx: ToolContext, token: str, auth_req_id: str | None = None) -> bool:
        """A ping for this tool call: if `token` is the one its pending request carries (and `auth_req_id`,
        if given, is its request), make the next check due now and return True. A ping never approves
        anything by itself: the check polls the token endpoint. Anything else, a second ping included, is
        False."""
        key = self.key_for(ctx)
        async with self._hold(key):
            record = await self.store.get(PENDING_NAMESPACE, key)
            if record is None or record.get("state") != "pending" or record.get("pinged_at"):
                return False
            if not token_matches(token, record.get("notification_token_sha256")):
                return False
            if auth_req_id is not None and not hmac.compare_digest(str(record.get("auth_req_id")), auth_req_id):
                return False
            if not await self._first_ping(token):
                return False
            now = self.clock()
            record.update(pinged_at=now, next_poll_at=now)
            await self.store.put(PENDING_NAMESPACE, key, record, ttl=self._record_ttl_left(record, now))
            return True

    async def accept_late_ping(self, ctx: ToolContext, token: str) -> bool:
        """A ping for this call after a check already took the user's decision (the ping woke its thread,
        whose overdue check ran first): nothing to do, and True the first time this token comes. The caller
        has checked that the token was minted for this call (its MAC)."""
        async with self._hold(self.key_for(ctx)):
            return await self._first_ping(token)

    async def _first_ping(self, token: str) -> bool:
        """Whether this notification token is seen for the first time (each is accepted once)."""
        lifetime = float(self.options.requested_expiry) + self.options.pending_retention
        return await self.store.create_if_absent(PINGS_NAMESPACE, token_digest(token), True, ttl=lifetime)

    async def probe_payload(self, ctx: ToolContext) -> str | None:
        """What an alarm probe needs to check this call's request while its thread sleeps (sealed), or None
        if a probe cannot stand in for the check: not ping mode, no request out yet, or already pinged."""
        handoff = self.options.handoff
        if handoff is None:
            return None
        record = await self.store.get(PENDING_NAMESPACE, self.key_for(ctx))
        if record is None or record.get("state") != "pending" or not record.get("auth_req_id"):
            return None
        if record.get("pinged_at"):  # the ping came: the thread checks now, by itself
            return None
        expires_at = float(record["expires_at"])
        request = ProbeRequest(
            handoff_key=self.handoff_key(ctx),
            auth_req_id=str(record["auth_req_id"]),
            expires_at=expires_at,
            requested_at=float(record.get("requested_at") or expires_at - self.options.requested_expiry),
            interval=int(record.get("interval") or 5),
            ping_fallback=self.options.ping_fallback,
            issuer=self.client.issuer,
            client_id=self.client.client_id,
        )
        return seal_request(request)


_call_args: ContextVar[BaseModel | None] = ContextVar("async_confirmation_args", default=None)


class AsyncUserConfirmationTool(Tool):
    """The wrapped tool: same name, description and parameters; `run(args, ctx)` goes through CIBA."""

    def __init__(self, inner: Tool, confirmation: AsyncUserConfirmation) -> None:
        super().__init__(
            self._guarded,
            name=inner.name,
            description=inner.description,
            parameters=inner.parameters,
            requires_confirmation=inner.requires_confirmation,
        )
        self.inner = inner
        self.confirmation = confirmation

    async def run(self, args: BaseModel, ctx: ToolContext) -> Any:
        token = _call_args.set(args)
        try:
            return await super().run(args, ctx)  # sets the tool context, then calls _guarded
        finally:
            _call_args.reset(token)

    async def _guarded(self, **arguments: Any) -> Any:
        args = _call_args.get()
        if args is None:  # called as a bare function: validate like the agent would
            args = self.inner.parse_arguments(arguments)
        return await self.confirmation.run(args, current_tool_context(), arguments)


def with_async_user_confirmation(
    tool: Tool,
    *,
    scopes: Sequence[str],
    binding_message: Resolvable[str],
    store: CredentialStore,
    client: CIBAClient,
    user_id: Resolvable[str] | None = None,
    audience: str | None = None,
    requested_expiry: int = 300,
    authorization_details: Resolvable[list[dict[str, Any]] | None] = None,
    on_authorization_interrupt: InterruptCallback | None = None,
    on_unauthorized: InterruptCallback | None = None,
    retry_backoff: tuple[float, float] = (2.0, 60.0),
    delivery_mode: str = "poll",
    ping_fallback: float | None = None,
    ping_key: bytes | None = None,
    handoff: CibaHandoff | None = None,
) -> AsyncUserConfirmationTool:
    """Wrap `tool` so each call runs only after the user approved it via CIBA (see the module docstring).

    `user_id`, `binding_message` and `authorization_details` are values or (async) functions called with
    the tool's validated arguments as keyword arguments; `user_id` defaults to `current_tool_context().owner`.
    The CIBA user must be the thread's owner, never a value the model chose: the chat agent passes a
    callable returning the owner. `scopes` get `openid` added; `audience` is the API the token is for;
    `requested_expiry` is the seconds the user has to answer. `on_authorization_interrupt(interrupt, ctx)`
    sees every pending/polling interrupt before it is raised; `on_unauthorized(interrupt, ctx)`'s return
    value becomes the tool result of a terminal outcome. `retry_backoff` is (first, max) seconds between
    attempts while the authorization server is unreachable. `delivery_mode="ping"` asks the provider to
    notify the client when the user decided (see `AsyncUserConfirmation.accept_ping`); `ping_fallback` is
    then the time between checks on a timer, in case a ping is lost (None: a few checks over the request's
    lifetime, `PING_CHECKS_PER_REQUEST`), and `ping_key` signs the tokens. `handoff` (ping mode, the root's
    `tools.ciba.probe.ciba_handoff`) lets those checks run without waking a sleeping thread.
    """
    options = AsyncConfirmationOptions(
        scopes=tuple(scopes),
        binding_message=binding_message,
        user_id=user_id,
        audience=audience,
        requested_expiry=requested_expiry,
        authorization_details=authorization_details,
        on_authorization_interrupt=on_authorization_interrupt,
        on_unauthorized=on_unauthorized,
        retry_backoff=retry_backoff,
        delivery_mode=delivery_mode,
        ping_fallback=ping_fallback,
        ping_key=ping_key,
        handoff=handoff if delivery_mode == "ping" else None,
    )
    return AsyncUserConfirmationTool(tool, AsyncUserConfirmation(tool, options, store=store, client=client))


__all__ = [
    "AsyncUserConfirmationTool",
    "AsyncConfirmationOptions",
    "AsyncUserConfirmation",
    "CREDENTIALS_NAMESPACE",
    "DENIED_TEXT",
    "PENDING_NAMESPACE",
    "PROBER",
    "get_async_authorization_credentials",
    "get_ciba_credentials",
    "with_async_user_confirmation",
]
