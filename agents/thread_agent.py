"""`ThreadAgent`: the base of a chat agent of your own, with everything the product's `Chat` has.

    class ThreadAgent(AuthAgent, OwnedAgent, AsyncUserConfirmationResumer, AIChatAgent)

Every call carries the caller's JWT (verified), the thread belongs to whoever created it, and a tool wrapped
with `self.with_async_user_confirmation(...)` waits for the owner's approval on their device (CIBA), then
runs by itself exactly once with the approved token. A tool made with `requires_confirmation=True` waits
for approve/deny in the chat instead. Override `build_tools()`; see `examples/travel_agent.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from agents.ai_chat_agent import AIChatAgent
from agents.approval_slots import approval_slots
from agents.auth_agent import AuthAgent
from agents.messages import ToolCall
from agents.owned_agent import OwnedAgent
from agents.resumer import AsyncUserConfirmationResumer
from auth.settings import auth_settings
from runtime import internal
from tools.base import Tool, current_tool_context
from tools.ciba.agent_credential_store import AgentCredentialStore
from tools.ciba.client import CIBAClient
from tools.ciba.confirmation import (
    AsyncUserConfirmationTool,
    InterruptCallback,
    Resolvable,
    with_async_user_confirmation,
)
from tools.ciba.ping import deployment_ping_key
from tools.ciba.probe import ciba_handoff


def thread_owner(**_: Any) -> str:
    """The CIBA user: the owner of the thread the tool runs in (never a tool argument)."""
    owner = current_tool_context().owner
    if not owner:
        raise RuntimeError("the thread has no owner to ask for approval")
    return owner


TOO_MANY_PENDING_FOR_USER_TEXT = (
    "Not sent: {cap} approvals of this user are already waiting on their device (across their "
    "conversations). Ask the user to answer those first, then ask again."
)
TOO_MANY_PENDING_TEXT = (
    "Not sent: {cap} approvals of this conversation are already waiting on the user's device. Ask the user to "
    "answer those first, then ask again."
)


class ThreadAgent(AuthAgent, OwnedAgent, AsyncUserConfirmationResumer, AIChatAgent):
    """A chat thread owned by its creator whose sensitive tools wait for the owner's approval."""

    ciba_requested_expiry: ClassVar[int] = 300
    """Seconds the user has to approve (CIBA `requested_expiry`), unless a tool says otherwise."""

    idle_seconds_while_waiting: ClassVar[float | None] = 2.0
    """A thread whose only business is a pending approval (its next check a while away: ping mode) sleeps
    this soon after its turn; the ping, the check's alarm or the user's next message wakes it."""

    _credential_store: AgentCredentialStore | None = None

    @internal
    def with_async_user_confirmation(
        self,
        tool: Tool,
        *,
        scopes: Sequence[str],
        binding_message: Resolvable[str],
        audience: str | None = None,
        authorization_details: Resolvable[list[dict[str, Any]] | None] = None,
        on_unauthorized: InterruptCallback | None = None,
        requested_expiry: int | None = None,
    ) -> Tool:
        """`tool`, run only after the thread's owner approved it on their device: the deployment's CIBA
        client, delivery mode and this thread's encrypted credential store are filled in. `binding_message`
        (shown on the device) and `authorization_details` may be functions of the tool's arguments."""
        settings = auth_settings()
        return with_async_user_confirmation(
            tool,
            user_id=thread_owner,
            scopes=scopes,
            audience=audience,
            binding_message=binding_message,
            authorization_details=authorization_details,
            on_unauthorized=on_unauthorized,
            requested_expiry=requested_expiry or self.ciba_requested_expiry,
            store=self.credential_store(),
            client=CIBAClient.shared(settings),
            delivery_mode=settings.ciba_delivery_mode,
            ping_fallback=settings.ciba_ping_fallback_seconds,
            ping_key=deployment_ping_key(settings),
            handoff=ciba_handoff(self.storage_dir) if settings.ciba_delivery_mode == "ping" else None,
        )

    @internal
    def credential_store(self) -> AgentCredentialStore:
        """This thread's approved tokens and pending requests, encrypted with `AUTH0_SESSION_ENCRYPTION_KEY`,
        in the thread's own storage (so fenced like its other writes, on either backend)."""
        if self._credential_store is None:
            self._credential_store = AgentCredentialStore(self.storage, auth_settings().require_encryption_key())
        return self._credential_store

    async def _execute_tool_call(self, call: ToolCall, *, confirmed: bool = False) -> None:
        """A new call of a tool that asks the user's device for approval is refused (with a result that says
        why) while `max_pending_approvals_per_thread` approvals of this thread are already waiting: one
        thread cannot flood the user's phone, nor the provider's per-user limit."""
        tool = self.tools.get(call.name)
        if call.state == "call" and isinstance(tool, AsyncUserConfirmationTool):
            refusal = await self._approval_refusal(call)
            if refusal is not None:
                await self._finish_call(call, refusal)
                return
        await super()._execute_tool_call(call, confirmed=confirmed)

    async def _approval_refusal(self, call: ToolCall) -> str | None:
        """Why a new approval for `call` may not be asked for (the thread's or the user's approvals waiting
        are at their cap), else None, with a slot taken for it among the user's."""
        per_thread = self.settings.max_pending_approvals_per_thread
        if len(await self.thread_store.calls("pending-authorization")) >= per_thread:
            return TOO_MANY_PENDING_TEXT.format(cap=per_thread)
        owner = await self.get_owner()
        per_user = self.settings.max_pending_approvals_per_user
        lifetime = 2.0 * self.ciba_requested_expiry + 60.0  # the request's life, and a lost-answer re-ask
        slots = approval_slots(self.storage_dir)
        if owner and not await slots.take(owner, self._slot_key(call.id), per_user=per_user, lifetime=lifetime):
            return TOO_MANY_PENDING_FOR_USER_TEXT.format(cap=per_user)
        return None

    def _slot_key(self, tool_call_id: str) -> str:
        return f"{self.name}/{tool_call_id}"

    async def _finish_call(self, call: ToolCall, result: str, *, interrupt: dict[str, Any] | None = None) -> None:
        """A call that ends gives its approval slot back (if it had one)."""
        await super()._finish_call(call, result, interrupt=interrupt)
        if isinstance(self.tools.get(call.name), AsyncUserConfirmationTool):
            await approval_slots(self.storage_dir).give_back(self._slot_key(call.id))
