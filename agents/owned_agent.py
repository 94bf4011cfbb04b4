"""`OwnedAgent`: the first authenticated caller to write to the thread owns it; everyone else gets
`NotOwnerError`.

The owner is the `sub` claim, stored in the agent's own file, claimed atomically (two first callers racing
cannot both win), and it is the user every CIBA request of the thread is sent to. Only a turn claims
(`claim`, `send_message`, ...): a read of a thread nobody owns yet sees an empty thread and writes nothing.
"""

from __future__ import annotations

from typing import Any

from agents.errors import NotOwnerError, UnauthenticatedError
from agents.mixin_base import MixinBase
from runtime import internal, public, read, turn

OWNER_KEY = "_owner"
READ_ACTIONS = frozenset({"get_messages", "get_pending_approvals", "poll_events", "describe"})
"""Actions that never make the caller the owner."""


class OwnedAgent(MixinBase):
    """Mixin for an `AIChatAgent`: ownership by the verified `sub` claim."""

    _owner_cache: str | None = None

    @internal
    async def get_owner(self) -> str | None:
        if self._owner_cache is None:
            self._owner_cache = await self.storage.get(OWNER_KEY)
        return self._owner_cache

    @internal
    async def set_owner(self, subject: str) -> str:
        """Claim the thread for `subject` if it has no owner yet; return the owner (atomic)."""
        self._owner_cache = await self.storage.setdefault(OWNER_KEY, subject)
        return self._owner_cache

    @internal
    async def authorize(self, claims: dict[str, Any], action: str) -> None:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise UnauthenticatedError("the token has no subject")
        owner = await self.get_owner()
        if owner is None and action not in READ_ACTIONS:
            owner = await self.set_owner(subject)
        if owner is not None and owner != subject:
            raise NotOwnerError("this thread belongs to another user")
        await super().authorize(claims, action)

    @public
    @turn
    async def claim(self, token: str | None) -> dict[str, Any]:
        """Create-or-open: the caller becomes the owner of a new thread; others get `NotOwnerError`."""
        had_owner = await self.get_owner() is not None
        claims = await self.check_access(token, "claim")
        return {"thread_id": self.id, "owner": claims.get("sub"), "created": not had_owner}

    @public
    @read
    async def describe(self, token: str | None) -> dict[str, Any]:
        """The thread's id, owner and message count, for listings."""
        await self.check_access(token, "describe")
        count, last = await self.thread_store.summary()
        return {"thread_id": self.id, "owner": await self.get_owner(), "messages": count, "last_message_at": last}
