"""One `httpx.AsyncClient` per event loop for the tools' outgoing calls.

Building a client costs about 20 ms (a TLS context and the certificate bundle), more than a call to a
service on the same machine; a purchase made that cost on the approval path. A client's connections belong
to the loop that opened them, so each loop (an actor's, a test's) gets its own, and it goes with its loop.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from functools import lru_cache

import httpx

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The default TLS context, built once per process (a client given it skips the 20 ms)."""
    return ssl.create_default_context()


def shared_client() -> httpx.AsyncClient:
    """This loop's client (timeouts are given per request); kept open while its loop lives."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(verify=tls_context(), headers={"Accept": "application/json"})
        _clients[loop] = client
    return client
