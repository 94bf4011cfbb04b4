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
through CIBA, never blocking on the user (`tools.ciba.flow` holds every state and transition of a call, and
returns what a step found; this module runs the tool with an approved credential, and raises an interrupt
only here, at the edge):

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
   requests that may have reached the device: a record left "requesting" without an
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

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from tools.base import (
    OutcomeUnknownError,
    Tool,
    ToolContext,
    ToolError,
    TransientToolError,
    current_tool_context,
    tool_context,
)
from tools.ciba import metrics
from tools.ciba.client import CIBAClient
from tools.ciba.credential_store import CredentialStore
from tools.ciba.credentials_context import (
    get_async_authorization_credentials,
    get_ciba_credentials,
    use_ciba_credentials,
)
from tools.ciba.flow import CibaFlow
from tools.ciba.interrupts import AccessDeniedInterrupt, AsyncAuthorizationInterrupt
from tools.ciba.options import (
    CREDENTIALS_NAMESPACE,
    DENIED_TEXT,
    PENDING_NAMESPACE,
    AsyncConfirmationOptions,
    InterruptCallback,
    Resolvable,
)
from tools.ciba.probe import PROBER, CibaHandoff
from tools.ciba.record import Ended, Replay, Waiting

log = logging.getLogger(__name__)


async def _call(callback: InterruptCallback, interrupt: AsyncAuthorizationInterrupt, ctx: ToolContext) -> Any:
    result = callback(interrupt, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


class AsyncUserConfirmation:
    """One wrapped tool: its calls' flow (`tools.ciba.flow.CibaFlow`), and the tool run at its edge."""

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
        self.clock = clock
        self.flow = CibaFlow(tool.name, options, store=store, client=client, clock=clock)

    async def run(self, args: BaseModel, ctx: ToolContext, arguments: Mapping[str, Any]) -> Any:
        """One step for this tool call: the tool's result, a terminal outcome, or a raised interrupt."""
        async with self.flow.hold(ctx) as key:
            step = await self.flow.step(ctx, key, arguments)
            if isinstance(step, Ended):
                return await self._unauthorized(step.interrupt, ctx)
            if isinstance(step, Waiting):
                await self._notify(step.interrupt, ctx)
                raise step.interrupt
            if isinstance(step, Replay):
                return step.outcome.replay()
            with use_ciba_credentials(step.credentials):
                try:
                    result = await self.tool.run(args, ctx)
                except OutcomeUnknownError:
                    await self.flow.mark_outcome_unknown(key)
                    raise  # the credential stays: the agent runs this call again later, and it looks first
                except TransientToolError:
                    raise  # the credential stays: the agent runs this call again later
                except ToolError as exc:
                    await self.flow.consume(key, error=str(exc))
                    raise
                except Exception as exc:
                    await self.flow.consume(key, error=f"{self.tool.name} failed ({type(exc).__name__})")
                    raise
            await self.flow.consume(key, result=result)
            approved_about = self.flow.approved_about.pop(key, None)
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


class AsyncUserConfirmationTool(Tool):
    """The wrapped tool: same name, description and parameters; `run(args, ctx)` goes through CIBA. Its
    `confirmation.flow` takes the calls' other transitions (pings, withdrawals, probes)."""

    def __init__(self, inner: Tool, confirmation: AsyncUserConfirmation) -> None:
        super().__init__(
            self._called_bare,
            name=inner.name,
            description=inner.description,
            parameters=inner.parameters,
            requires_confirmation=inner.requires_confirmation,
        )
        self.inner = inner
        self.confirmation = confirmation

    async def run(self, args: BaseModel, ctx: ToolContext) -> Any:
        with tool_context(ctx):
            return await self.confirmation.run(args, ctx, args.model_dump())

    async def _called_bare(self, **arguments: Any) -> Any:
        """Called as a plain function inside a tool context: validated as the agent would."""
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
