"""`ThreadDirectory`: a small durable agent per user that remembers which chat threads they own.

The HTTP ingress lists "my threads" from it. There is one directory per user, keyed by a safe id derived
from the token's `sub` claim (`directory_id_for(sub)`: `u-` + sha256 hex, so any subject maps to a valid
agent id and one user's id never reveals another's subject). Every call carries the caller's bearer JWT
and is verified here (like `Chat`), and the verified `sub` must map to this directory's id: a caller can
only read or change their own directory, whatever id the ingress computed.

Entries are recorded by the ingress after the `Chat` agent itself confirmed the caller owns the thread
(`claim` succeeded, or a message was accepted), so the directory lists only threads the caller owns.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, ClassVar

from agents.auth_agent import AuthAgent
from agents.errors import InvalidMessageError, NotOwnerError, ThreadQuotaExceededError, UnauthenticatedError
from agents.retention import DAY_SECONDS, Retention
from agents.settings import chat_settings
from runtime import Agent, internal, public, read, turn, validate_agent_id

DIRECTORY_MIGRATIONS = [
    """
    CREATE TABLE threads (
        thread_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        title TEXT,
        last_active_at REAL NOT NULL
    );
    CREATE INDEX threads_last_active ON threads(last_active_at);
    """
]

MAX_TITLE_CHARS = 80
MAX_LIST = 500


def directory_id_for(subject: str) -> str:
    """The directory agent id of a user: `u-` + sha256(sub) in hex (66 characters, always a valid id)."""
    return "u-" + hashlib.sha256(subject.encode("utf-8")).hexdigest()


def _title(text: str | None) -> str | None:
    if not text:
        return None
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_TITLE_CHARS else line[: MAX_TITLE_CHARS - 1].rstrip() + "\u2026"


def _row(row: Any) -> dict[str, Any]:
    return {
        "thread_id": row["thread_id"],
        "created_at": row["created_at"],
        "title": row["title"],
        "last_active_at": row["last_active_at"],
    }


class ThreadDirectory(AuthAgent, Agent):
    """The threads one user owns: id, creation time, a title (their first message) and last activity."""

    migrations = DIRECTORY_MIGRATIONS
    migration_scope = "agents.ThreadDirectory"

    retention_days: ClassVar[float | None] = None
    """Forget entries idle this many days; None: `CHAT_RETENTION_DAYS` (the threads' own retention)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retention = Retention("forget_idle_threads")

    def _retention_days(self) -> float | None:
        return self.retention_days or chat_settings().retention_days

    @internal
    async def forget_idle_threads(self, payload: Any = None) -> int:
        """The retention schedule (`agents.retention`): forget the entries idle longer than the retention
        (their threads delete themselves on their own schedules), then look again when the next one will
        be. Returns how many were forgotten."""
        days = self._retention_days()
        if days is None:
            return 0
        cutoff = time.time() - days * DAY_SECONDS
        forgotten = await self.storage.execute("DELETE FROM threads WHERE last_active_at <= ?", (cutoff,))
        row = await self.storage.fetchone("SELECT MIN(last_active_at) AS oldest FROM threads")
        if row is not None and row["oldest"] is not None:
            await self._retention.next_look(self, days, float(row["oldest"]))
        return forgotten

    async def _check_caller(self, token: str | None) -> str:
        claims = await self.authenticate(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise UnauthenticatedError("the token has no subject")
        if directory_id_for(subject) != self.id:
            raise NotOwnerError("this thread directory belongs to another user")
        return subject

    @public
    @turn
    async def add(self, token: str | None, thread_id: str, max_threads: int | None = None) -> dict[str, Any]:
        """Record a thread of the caller's; `created` says whether it is new to the directory.

        With `max_threads`, a new entry beyond that many is refused (`ThreadQuotaExceededError`), checked in
        the same transaction as the insert, so concurrent creations cannot overshoot the quota.
        """
        await self._check_caller(token)
        validate_agent_id(thread_id)
        await self._retention.arm(self, self._retention_days())
        now = time.time()
        async with self.storage.transaction() as tx:
            existing = await tx.fetchone("SELECT * FROM threads WHERE thread_id = ?", (thread_id,))
            if existing is not None:
                return {**_row(existing), "created": False}
            if max_threads is not None:
                row = await tx.fetchone("SELECT COUNT(*) AS n FROM threads")
                if row is not None and int(row["n"]) >= max_threads:
                    raise ThreadQuotaExceededError(
                        f"you already have {int(row['n'])} threads; the limit is {max_threads} per user"
                    )
            await tx.execute(
                "INSERT INTO threads(thread_id, created_at, title, last_active_at) VALUES (?, ?, NULL, ?)",
                (thread_id, now, now),
            )
        return {"thread_id": thread_id, "created_at": now, "title": None, "last_active_at": now, "created": True}

    @public
    @turn
    async def touch(self, token: str | None, thread_id: str, text: str | None = None) -> dict[str, Any]:
        """Note activity in a thread the caller owns (adding it if missing); the first text becomes its title."""
        await self._check_caller(token)
        validate_agent_id(thread_id)
        if text is not None and not isinstance(text, str):
            raise InvalidMessageError("text must be a string")
        await self._retention.arm(self, self._retention_days())
        now = time.time()
        await self.storage.execute(
            "INSERT INTO threads(thread_id, created_at, title, last_active_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(thread_id) DO UPDATE SET last_active_at = excluded.last_active_at, "
            "title = COALESCE(threads.title, excluded.title)",
            (thread_id, now, _title(text), now),
        )
        row = await self.storage.fetchone("SELECT * FROM threads WHERE thread_id = ?", (thread_id,))
        return _row(row)

    @public
    @turn
    async def remove(self, token: str | None, thread_id: str) -> bool:
        """Forget a thread (the thread itself is untouched). True if it was listed."""
        await self._check_caller(token)
        return await self.storage.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,)) > 0

    @public
    @read
    async def list_threads(self, token: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """The caller's threads, most recently active first."""
        await self._check_caller(token)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidMessageError("limit must be an integer")
        rows = await self.storage.fetchall(
            "SELECT * FROM threads ORDER BY last_active_at DESC, created_at DESC LIMIT ?",
            (max(1, min(limit, MAX_LIST)),),
        )
        return [_row(row) for row in rows]
