"""Giving the memory that hibernated agents freed back to the system.

An agent's storage works on threads of its own (aiosqlite runs each SQLite connection on one), and glibc's
`malloc` gives every thread an arena that keeps what is freed in it for later use instead of returning it.
So a host whose agents all went to sleep still held the peak of what they used while awake: measured on
two hosts that served 600 agents each, all asleep, 195 MiB each, of which `malloc_trim(0)` gave back 28.
(The rest is not per agent: the agent's code and libraries, imported at the first activation, and SQLite's
own state; each further agent added about 7 KB.) Waiting that costs nothing includes memory.

A host calls `FreedMemory.release_if_due` on its reaper tick; the trim runs when agents have left since
the last one, at most every `TRIM_EVERY_SECONDS` (about 30 ms for 200 MiB freed, on a worker thread).
Where the C library is not glibc, it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from functools import lru_cache
from typing import Any

__all__ = ["FreedMemory", "TRIM_EVERY_SECONDS"]

TRIM_EVERY_SECONDS = 30.0
"""At most one trim per host this often, and only after agents have left."""


@lru_cache(maxsize=1)
def _malloc_trim() -> Any | None:
    """glibc's `malloc_trim`, or None where there is none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class FreedMemory:
    """When to hand freed memory back: after hibernations, not more often than `TRIM_EVERY_SECONDS`."""

    def __init__(self, every_seconds: float = TRIM_EVERY_SECONDS) -> None:
        self.every_seconds = every_seconds
        self.trims = 0
        self._hibernations_then = 0
        self._last = time.monotonic()

    async def release_if_due(self, hibernations: int) -> bool:
        """Trim if agents left (`hibernations`, a running count, moved) and the last trim is old enough.
        True if it trimmed. The trim runs on a worker thread (ctypes lets go of the GIL): the host's loop
        goes on meanwhile."""
        trim = _malloc_trim()
        if trim is None or hibernations == self._hibernations_then:
            return False
        if time.monotonic() - self._last < self.every_seconds:
            return False
        self._hibernations_then, self._last = hibernations, time.monotonic()
        await asyncio.to_thread(trim, 0)
        self.trims += 1
        return True
