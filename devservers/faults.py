"""Faults a dev server can be told to play, for the soak and fault tests: a stall, late answers, and
answers replaced by a gateway's error.

A stalled server still accepts connections but answers nothing until the stall ends, as a provider does
when it is overloaded or half-partitioned. With late answers it does the work at once and holds the
answer back, so a client that gives up first never learns what was done (a token issued, a request
spent): the answer lost on the way. With gateway errors the work is done and its answer replaced by a
502 or 504, as a proxy in front of the server answers when the server was slow. Clients meet real sockets
and real timeouts, not a mock. The switches
live in the server's state, so the process that runs the server (a test, the soak driver) flips them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect

LOOK_AGAIN_SECONDS = 0.2
"""How often a request waiting out a fault looks whether it was ended or extended."""


class Stall:
    """`hold(s)`: answer nothing for `s` seconds from now; `delay_answers(s)`: for `s` seconds from now,
    work at once but hold each answer back until that time; `replace_answers(n, status, path)`: the next
    `n` requests whose path contains `path` are served, and answered `status` instead."""

    def __init__(self) -> None:
        self._until = 0.0
        self._answers_until = 0.0
        self._replaced: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def replace_answers(self, count: int, status: int, path: str = "") -> None:
        with self._lock:
            self._replaced.extend([(status, path)] * count)

    def take_replacement(self, path: str) -> int | None:
        """The status to answer this request with instead of its own, if one is due for its path."""
        with self._lock:
            for i, (status, part) in enumerate(self._replaced):
                if part in path:
                    del self._replaced[i]
                    return status
        return None

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def end(self) -> None:
        """Stop every fault now: the requests waiting out a stall are served, the answers held back are
        sent (within `LOOK_AGAIN_SECONDS`), so a server stops without waiting for them."""
        with self._lock:
            self._until = self._answers_until = 0.0
            self._replaced.clear()

    def delay_answers(self, seconds: float) -> None:
        with self._lock:
            self._answers_until = max(self._answers_until, time.monotonic() + seconds)

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - time.monotonic())

    def answers_held(self) -> float:
        with self._lock:
            return max(0.0, self._answers_until - time.monotonic())


async def _discard(message: dict[str, Any]) -> None:
    """An ASGI `send` that drops the answer (a gateway replaced it)."""


class Stalling:
    """ASGI middleware: an HTTP request that arrives during a stall waits for its end before it is served."""

    def __init__(self, app: Any, stall: Stall) -> None:
        self.app = app
        self.stall = stall

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        replaced = self.stall.take_replacement(scope.get("path", "")) if scope["type"] == "http" else None
        if replaced is not None:
            await self.app(scope, receive, _discard)  # the work is done; its answer never leaves
            body = b"<html><body>Bad Gateway</body></html>" if replaced == 502 else b"Gateway Timeout"
            await send(
                {"type": "http.response.start", "status": replaced, "headers": [(b"content-type", b"text/html")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
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
                await _wait_while(self.stall.answers_held)
            await send(message)

        return send_late

    async def _wait_out_the_stall(self) -> None:
        await _wait_while(self.stall.remaining)


async def _wait_while(remaining: Callable[[], float]) -> None:
    """Until `remaining()` is 0, looking again every `LOOK_AGAIN_SECONDS`: another thread (the test, the
    soak driver) may extend or end the fault meanwhile, so no event of this loop could say when."""
    while (wait := remaining()) > 0:  # noqa: ASYNC110 - set from another thread, see above
        await asyncio.sleep(min(wait, LOOK_AGAIN_SECONDS))
