"""`ApprovalSlots`: how many approvals one user has waiting on their device, across all their threads.

The provider limits CIBA requests per user (Auth0: about five a minute), and each one pushes the user's
phone, so a user's threads together may have at most `CHAT_MAX_PENDING_APPROVALS_PER_USER` approvals
waiting. One shared store of the root (`runtime.storage_choice.shared_storage`: a small SQLite file beside
the class folders, or rows in the database) holds a slot per waiting tool call; every host takes and gives
back slots in it one writer at a time. A
slot is taken before a tool call's first request, given back when the call ends (whatever its outcome),
and expires on its own after the request's lifetime, so a crash between the two never keeps one forever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from runtime.storage_api import StorageAPI
from runtime.storage_choice import shared_storage

SLOTS_NAME = "approval-slots"
SLOTS_MIGRATIONS = [
    """
    CREATE TABLE slots (
        call_key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX slots_by_owner ON slots (owner, expires_at);
    """
]


class ApprovalSlots:
    """The slots of one storage root (one per process and root: `approval_slots`)."""

    def __init__(self, storage_dir: Path) -> None:
        self.storage = shared_storage(SLOTS_NAME, Path(storage_dir) / f"{SLOTS_NAME}.sqlite3")
        self._open = False
        self._opening = asyncio.Lock()

    async def _ready(self) -> StorageAPI:
        """The store, opened and migrated once. Every agent of the process shares it, and the first
        purchases of a fresh process come at once (after a host restart, all the threads it resumes):
        without the lock each opened it again, swapping its connections under the others' transactions
        (a migration run twice, "cannot commit - no transaction is active": an HTTP 500)."""
        async with self._opening:
            if not self._open:
                await self.storage.open()
                await self.storage.migrate("agents.ApprovalSlots", SLOTS_MIGRATIONS)
                self._open = True
        return self.storage

    async def take(self, owner: str, call_key: str, *, per_user: int, lifetime: float) -> bool:
        """A slot for `call_key` (True if it has one already), or False: `owner` has `per_user` taken."""
        storage = await self._ready()
        now = time.time()
        async with storage.transaction() as tx:
            await tx.execute("DELETE FROM slots WHERE expires_at <= ?", (now,))
            if await tx.fetchone("SELECT 1 FROM slots WHERE call_key = ?", (call_key,)) is not None:
                return True
            row = await tx.fetchone("SELECT COUNT(*) AS n FROM slots WHERE owner = ?", (owner,))
            if row is not None and int(row["n"]) >= per_user:
                return False
            await tx.execute(
                "INSERT INTO slots(call_key, owner, expires_at) VALUES (?, ?, ?)", (call_key, owner, now + lifetime)
            )
        return True

    async def give_back(self, call_key: str) -> None:
        storage = await self._ready()
        await storage.execute("DELETE FROM slots WHERE call_key = ?", (call_key,))

    async def close(self) -> None:
        """Close the store (a host keeps it for its life; a script or test that made its own closes it)."""
        async with self._opening:
            if self._open:
                await self.storage.close()
                self._open = False


_shared: dict[Path, ApprovalSlots] = {}


def approval_slots(storage_dir: Path) -> ApprovalSlots:
    """The slots of this storage root, shared by the agents of this process."""
    root = Path(storage_dir).resolve()
    if root not in _shared:
        _shared[root] = ApprovalSlots(root)
    return _shared[root]
