"""`AsyncUserConfirmationResumer`: durable alarms that poll CIBA and resume the interrupted tool call.

When a tool call is interrupted by a pending approval, a check is scheduled (through the runtime's
durable schedules) for the time the interrupt names (`next_check_at`, which honours the server's
`interval` and any `slow_down`). Each check re-runs the wrapped tool once, which polls the token
endpoint once: still pending -> the next check is scheduled; approved -> the tool runs with its
credential and the conversation continues; denied or expired -> that becomes the tool's result.

One pending check per tool call: scheduling a new one replaces the old, so overlapping resumer loops
(a known flaw of other resumers) cannot happen.

A check that fails (its storage busy, the tool's code raising) is never parked while the user may still
decide: the runtime retries it with backoff (`keeps_retrying`), and once the request has expired the check
ends the call with a result that says so, instead of leaving it pending forever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agents.errors import ToolCallNotPendingError, UnknownToolCallError
from agents.messages import ChatMessage, ToolCall
from agents.mixin_base import MixinBase
from runtime import Schedule, internal, public, turn
from runtime.alarm_probes import AlarmProbe
from tools.ciba.confirmation import AsyncUserConfirmationTool
from tools.ciba.flow import CibaFlow
from tools.ciba.interrupts import AsyncAuthorizationInterrupt
from tools.ciba.ping import deployment_ping_key, notification_target
from tools.ciba.probe import PROBER

CHECK_CALLBACK = "check_async_user_confirmation"
WITHDRAWN_TEXT = "Cancelled by the user before it was approved: nothing was done."
DEFAULT_INTERVAL_SECONDS = 5.0
UNKNOWN_EXPIRY_SECONDS = 3600.0
"""How long a failing check keeps trying for a call whose request's expiry is not known (never sent)."""

logger = logging.getLogger("agents.resumer")


class AsyncUserConfirmationResumer(MixinBase):
    """Mixin for an `AIChatAgent`: schedule and run the checks of pending async authorizations."""

    @internal
    async def on_authorization_interrupt(self, call: ToolCall, interrupt: AsyncAuthorizationInterrupt) -> None:
        await self.schedule_async_user_confirmation_check(call.id, interrupt)
        await super().on_authorization_interrupt(call, interrupt)

    @internal
    async def schedule_async_user_confirmation_check(
        self, tool_call_id: str, interrupt: AsyncAuthorizationInterrupt | dict[str, Any]
    ) -> None:
        """Schedule the next check of `tool_call_id` at the interrupt's `next_check_at` (one per call)."""
        data = interrupt.to_dict() if isinstance(interrupt, AsyncAuthorizationInterrupt) else interrupt
        next_check = data.get("next_check_at") or time.time() + float(data.get("interval") or DEFAULT_INTERVAL_SECONDS)
        payload = {"tool_call_id": tool_call_id}
        earlier = (await self._scheduled_checks()).get(tool_call_id, [])
        # the new check first, then the old ones go: whatever stops this half-way leaves a check behind
        await self.schedule(max(0.0, float(next_check) - time.time()), CHECK_CALLBACK, payload)
        for schedule_id in earlier:
            await self.cancel_schedule(schedule_id)

    @public
    @turn
    async def notify_ciba_ping(self, notification_token: str, auth_req_id: str | None = None) -> bool:
        """A CIBA ping (the provider says the user decided): if the token is the one a pending call's request
        carries, check that call now instead of at its next timer. A ping that comes after a check already
        found the decision (the thread woke for it and its overdue check ran first) is accepted too, with
        nothing left to do. True if accepted; False for anything else (unknown, mismatched, replayed: each
        token is accepted once), which changes nothing."""
        key = deployment_ping_key()
        target = notification_target(key, notification_token)
        if target is None or target.thread_id != self.id:
            return False
        call = await self.thread_store.tool_call(target.tool_call_id)
        flow = self._ciba_flow_of(call)
        if call is None or flow is None or call.state not in ("pending-authorization", "result"):
            return False
        if call.state == "result":
            return await flow.accept_late_ping(await self._tool_context(call), notification_token)
        if not await flow.accept_ping(await self._tool_context(call), notification_token, auth_req_id):
            return False
        await self.schedule_async_user_confirmation_check(call.id, {"next_check_at": time.time()})
        return True

    @public
    @turn
    async def withdraw_approval(self, token: str | None, tool_call_id: str) -> list[ChatMessage]:
        """The owner withdraws a call that waits for their approval on their device: it ends as
        `WITHDRAWN_TEXT`, its checks stop, and an approval that comes later is ignored (its token is spent
        unused, and nothing is bought). The model then answers (the new messages are returned).

        The request stays on the user's device (CIBA has no way to take it back); approving it there does
        nothing."""
        await self.check_access(token, "withdraw_approval")
        call = await self.thread_store.tool_call(str(tool_call_id))
        if call is None:
            raise UnknownToolCallError(f"no tool call {tool_call_id!r} in this thread")
        if call.state != "pending-authorization":
            raise ToolCallNotPendingError(f"tool call {call.id!r} is {call.state}, not waiting for an approval")
        first_seq = await self.thread_store.last_seq()
        if not await self._withdraw(call):
            await self.resume_tool_call({"tool_call_id": call.id})  # it ran before a crash: record its outcome
            raise ToolCallNotPendingError(f"tool call {call.id!r} was approved and has run: it cannot be withdrawn")
        await self._continue_if_resolved(call.id)
        return await self.thread_store.messages_after(first_seq)

    async def _withdraw(self, call: ToolCall) -> bool:
        """End a call waiting for approval as `WITHDRAWN_TEXT`: its credential spent, its checks cancelled.
        False, changing nothing, if its tool already ran (a crash came before its result was recorded)."""
        flow = self._ciba_flow_of(call)
        if flow is not None and not await flow.withdraw(await self._tool_context(call), WITHDRAWN_TEXT):
            return False
        for schedule_id in (await self._scheduled_checks()).get(call.id, []):
            await self.cancel_schedule(schedule_id)
        await self._finish_call(call, WITHDRAWN_TEXT)
        return True

    @internal
    async def before_delete(self) -> None:
        """A thread being deleted withdraws its calls waiting on the user's device first: an approval that
        comes later finds nothing to run (its token spent), and the user's approval slots are given back."""
        for call in await self.thread_store.calls("pending-authorization"):
            await self._withdraw(call)
        await super().before_delete()

    @internal
    async def check_async_user_confirmation(self, payload: dict[str, Any]) -> None:
        """The alarm: poll once by re-running the tool call (a no-op if it already finished). If that fails
        after the request expired, end the call clearly; before, raise, and the runtime tries again."""
        try:
            await self.resume_tool_call(payload)
        except Exception as exc:
            call = await self.thread_store.tool_call(str(payload.get("tool_call_id", "")))
            if call is None or call.state != "pending-authorization" or time.time() < _expiry(call):
                raise
            logger.warning("%s: the approval check of %s failed past its expiry: %s", self.name, call.id, exc)
            await self._finish_call(
                call,
                f"The approval for {call.name} could not be checked before the request expired "
                f"({type(exc).__name__}); it was not confirmed. If you approved it, check the outcome "
                "before asking again.",
            )
            await self._continue_if_resolved(call.id)

    @internal
    async def alarm_probe(self, schedule: Schedule) -> AlarmProbe | None:
        """A thread going to sleep with an approval check next: in ping mode the check is a safety net for a
        lost ping, so the scheduler may run it as a probe (`tools.ciba.probe`) and wake the thread only
        when the user has answered."""
        if schedule.callback != CHECK_CALLBACK or not isinstance(schedule.payload, dict):
            return await super().alarm_probe(schedule)
        call = await self.thread_store.tool_call(str(schedule.payload.get("tool_call_id", "")))
        flow = self._ciba_flow_of(call)
        if call is None or call.state != "pending-authorization" or flow is None:
            return None
        payload = await flow.probe_payload(await self._tool_context(call))
        return AlarmProbe(prober=PROBER, payload=payload) if payload is not None else None

    def _ciba_flow_of(self, call: ToolCall | None) -> CibaFlow | None:
        """The CIBA flow of the tool that made `call`, if it is a wrapped one (`with_async_user_confirmation`)."""
        tool = self.tools.get(call.name) if call is not None else None
        return tool.confirmation.flow if isinstance(tool, AsyncUserConfirmationTool) else None

    @internal
    def keeps_retrying(self, schedule: Schedule) -> bool:
        """Approval checks are retried for as long as they fail (they end the call themselves once the
        request has expired); other schedules as the base class says."""
        return schedule.callback == CHECK_CALLBACK or super().keeps_retrying(schedule)

    async def _schedule_recovery(self) -> None:
        """After a restart, every call still waiting for approval has a check scheduled."""
        await super()._schedule_recovery()
        scheduled = await self._scheduled_checks()
        for call in await self.thread_store.calls("pending-authorization"):
            if call.id not in scheduled:
                await self.schedule_async_user_confirmation_check(call.id, call.interrupt or {})

    async def _scheduled_checks(self) -> dict[str, list[str]]:
        """The pending approval checks by tool call id: their schedule ids (one, except half-way through a
        reschedule)."""
        checks: dict[str, list[str]] = {}
        for schedule in await self.get_schedules(status="pending"):
            if schedule.callback == CHECK_CALLBACK and isinstance(schedule.payload, dict):
                checks.setdefault(str(schedule.payload.get("tool_call_id")), []).append(schedule.id)
        return checks


def _expiry(call: ToolCall) -> float:
    """When the call's request expires (from its last interrupt), or a bound if it was never sent."""
    expires_at = (call.interrupt or {}).get("expires_at")
    return float(expires_at) if expires_at else float(call.created_at) + UNKNOWN_EXPIRY_SECONDS
