"""`ReadCache`: one read of an agent's file, kept until the agent writes again.

A live agent is its file's only writer (fencing), so what it read stays true until its next write
transaction ends; `AgentStorage.writes` counts those. State read many times between writes (a chat
thread a page re-reads) then costs no SQLite round trip after the first, and memory stays bounded by what
live agents hold (a hibernated agent takes its cache with it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from runtime.storage import AgentStorage

T = TypeVar("T")


class ReadCache(Generic[T]):
    """`await cache.get(read)`: `read()`'s last result while no write ended since it started, else a new read."""

    def __init__(self, storage: AgentStorage) -> None:
        self.storage = storage
        self._value: T | None = None
        self._taken_at: int | None = None

    async def get(self, read: Callable[[], Awaitable[T]]) -> T:
        if self.storage.in_transaction():  # it would see its own uncommitted writes: never cache those
            return await read()
        if self._taken_at == self.storage.writes:
            return self._value  # type: ignore[return-value]
        taken_at = self.storage.writes  # before the read: a write ending during it makes the value stale
        value = await read()
        self._value, self._taken_at = value, taken_at
        return value
