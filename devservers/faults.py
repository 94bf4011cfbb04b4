"""Faults a dev server can be told to play, for the soak and fault tests: here, a stall.

A stalled server still accepts connections but answers nothing until the stall ends, as a provider does
when it is overloaded or half-partitioned: clients meet real sockets and real timeouts, not a mock. The
switch lives in the server's state, so the process that runs the server (the soak driver) flips it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any


class Stall:
    """When the server answers again (monotonic seconds); `hold(s)` stalls it for `s` seconds from now."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - time.monotonic())


class Stalling:
    """ASGI middleware: an HTTP request that arrives during a stall waits for its end before it is served."""

    def __init__(self, app: Any, stall: Stall) -> None:
        self.app = app
        self.stall = stall

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._wait_out_the_stall()
        await self.app(scope, receive, send)

    async def _wait_out_the_stall(self) -> None:
        # the stall may be extended while a request waits (another `hold`): look again after each wait
        wait = self.stall.remaining()
        while wait > 0:
            await asyncio.sleep(wait)
            wait = self.stall.remaining()
