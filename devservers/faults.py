"""Faults a dev server can be told to play, for the soak and fault tests: a stall, and late answers.

A stalled server still accepts connections but answers nothing until the stall ends, as a provider does
when it is overloaded or half-partitioned. With late answers it does the work at once and holds the
answer back, so a client that gives up first never learns what was done (a token issued, a request
spent): the answer lost on the way. Clients meet real sockets and real timeouts, not a mock. The switches
live in the server's state, so the process that runs the server (a test, the soak driver) flips them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from starlette.requests import ClientDisconnect


class Stall:
    """`hold(s)`: answer nothing for `s` seconds from now; `delay_answers(s)`: for `s` seconds from now,
    work at once but hold each answer back until that time."""

    def __init__(self) -> None:
        self._until = 0.0
        self._answers_until = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def delay_answers(self, seconds: float) -> None:
        with self._lock:
            self._answers_until = max(self._answers_until, time.monotonic() + seconds)

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - time.monotonic())

    def answers_held(self) -> float:
        with self._lock:
            return max(0.0, self._answers_until - time.monotonic())


class Stalling:
    """ASGI middleware: an HTTP request that arrives during a stall waits for its end before it is served."""

    def __init__(self, app: Any, stall: Stall) -> None:
        self.app = app
        self.stall = stall

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.stall.answers_held() > 0:
            await self.app(scope, receive, self._late(send))
            return
        if scope["type"] != "http" or self.stall.remaining() <= 0:
            await self.app(scope, receive, send)
            return
        await self._wait_out_the_stall()
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            pass  # the client gave up during the stall: nobody to answer, nothing to log

    def _late(self, send: Any) -> Any:
        async def send_late(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(self.stall.answers_held())
            await send(message)

        return send_late

    async def _wait_out_the_stall(self) -> None:
        # the stall may be extended while a request waits (another `hold`): look again after each wait
        wait = self.stall.remaining()
        while wait > 0:
            await asyncio.sleep(wait)
            wait = self.stall.remaining()
