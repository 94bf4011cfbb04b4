"""`OwnedAgent`: the first authenticated caller owns the thread; everyone else gets `NotOwnerError`.

The owner is the `sub` claim, stored in the agent's own file, claimed atomically (two first callers
racing cannot both win), and it is the user every CIBA request of the thread is sent to.
"""

from __future__ import annotations

from typing import Any

from agents.errors import NotOwnerError, UnauthenticatedError
from runtime import read

OWNER_KEY = "_owner"


class OwnedAgent:
    """Mixin for an `AIChatAgent`: ownership by the verified `sub` claim."""

    _owner_cache: str | None = None

    async def get_owner(self) -> str | None:
        if self._owner_cache is None:
            self._owner_cache = await self.storage.get(OWNER_KEY)  # type: ignore[attr-defined]
        return self._owner_cache

    async def set_owner(self, subject: str) -> str:
        """Claim the thread for `subject` if it has no owner yet; return the owner (atomic)."""
        async with self.storage.transaction() as tx:  # type: ignore[attr-defined]
            row = await tx.fetchone("SELECT value FROM _kv WHERE key = ?", (OWNER_KEY,))
            if row is None:
                await tx.put(OWNER_KEY, subject)
                owner = subject
            else:
                import json

                owner = json.loads(row["value"])
        self._owner_cache = owner
        return owner

    async def authorize(self, claims: dict[str, Any], action: str) -> None:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise UnauthenticatedError("the token has no subject")
        owner = await self.get_owner() or await self.set_owner(subject)
        if owner != subject:
            raise NotOwnerError("this thread belongs to another user")
        await super().authorize(claims, action)  # type: ignore[misc]

    @read
    async def claim(self, token: str | None) -> dict[str, Any]:
        """Create-or-open: the caller becomes the owner of a new thread; others get `NotOwnerError`."""
        had_owner = await self.get_owner() is not None
        claims = await self.check_access(token, "claim")  # type: ignore[attr-defined]
        return {"thread_id": self.id, "owner": claims.get("sub"), "created": not had_owner}

    @read
    async def describe(self, token: str | None) -> dict[str, Any]:
        """The thread's id, owner and message count, for listings."""
        await self.check_access(token, "describe")  # type: ignore[attr-defined]
        row = await self.storage.fetchone(  # type: ignore[attr-defined]
            "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM messages"
        )
        return {
            "thread_id": self.id,
            "owner": await self.get_owner(),
            "messages": int(row["n"]) if row else 0,
            "last_message_at": row["last"] if row else None,
        }
