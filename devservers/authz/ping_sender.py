"""`PingSender`: how the dev authorization server delivers CIBA pings, the way a real provider's queue does.

A ping (CIBA Core 1.0 section 10.2) is the provider's POST to the client's notification endpoint. Sent
from a new thread with a new connection each, two thousand approvals at once would make two thousand
threads fight for the GIL of the process that also serves the approval page (in `agentrt serve` and in
the benchmarks, the driver's own process): pings would time out and be lost, and the page drop connections.

Here every ping goes through one event loop on one daemon thread, over one pooled `httpx.AsyncClient`, with
at most `CONNECTIONS` in flight. A ping the client could not take (no answer, a 5xx, a 429) is retried with
backoff for about half a minute, as a provider that queues its notifications does; a 4xx other than 429 is
final (the client refused the token). The thread starts with the first ping and stops with the process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

import httpx

from auth.http_pool import tls_context

__all__ = ["PingSender"]

logger = logging.getLogger("devservers.authz_server")

CONNECTIONS = 16
"""Pings in flight at once (and open connections to the client)."""
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Seconds before each retry of a ping the client could not take; then it is given up (the client's own
safety-net poll still finds the decision)."""
TIMEOUT = 10.0
"""Seconds one delivery may take."""


@dataclass
class PingSender:
    """Delivers pings off the caller's thread, `CONNECTIONS` at a time, retrying what the client could not
    take. Thread-safe: `send` may be called from any thread."""

    delivered: int = 0
    given_up: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _started: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _slots: asyncio.Semaphore = field(init=False, repr=False)
    _client: httpx.AsyncClient = field(init=False, repr=False)

    def send(self, endpoint: str, token: str, auth_req_id: str) -> None:
        """Queue one ping: `auth_req_id` to `endpoint`, with the request's notification token as bearer."""
        loop = self._running_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._deliver(endpoint, token, auth_req_id)))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._started:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="ciba-pings", daemon=True).start()
                self._loop = loop
                self._slots = asyncio.Semaphore(CONNECTIONS)
                self._client = httpx.AsyncClient(
                    verify=tls_context(),  # a new TLS context per client would cost ~20 ms
                    timeout=TIMEOUT,
                    limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS),
                )
            return self._loop

    async def _deliver(self, endpoint: str, token: str, auth_req_id: str) -> None:
        for delay in (0.0, *RETRY_DELAYS):
            await asyncio.sleep(delay)
            async with self._slots:
                failure = await self._post(endpoint, token, auth_req_id)
            if failure is None:
                self.delivered += 1
                return
        self.given_up += 1
        logger.warning("ping to %s given up after %d attempts: %s", endpoint, len(RETRY_DELAYS) + 1, failure)

    async def _post(self, endpoint: str, token: str, auth_req_id: str) -> str | None:
        """None when the client took the ping (or refused it for good); else why it should be tried again."""
        try:
            response = await self._client.post(
                endpoint, json={"auth_req_id": auth_req_id}, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code >= 500 or response.status_code == 429:
            return f"HTTP {response.status_code}"
        if response.status_code >= 400:
            logger.warning("ping to %s refused: HTTP %d", endpoint, response.status_code)
        return None
