"""`DiscoveryCache`: issuers' OpenID discovery documents, fetched once per process for all who share it.

The token verifier reads `jwks_uri` from the document, the CIBA client its endpoints. Both live in every
agent host and ingress replica; given the process's cache (`process_discovery()`, which the settings-made
verifier and CIBA client use), they fetch the document once per `ttl` between them. Each consumer passes
its own `fetch`, so it keeps its own error rules (the verifier fails closed, the CIBA client retries a
provider outage); the cache only remembers what a fetch returned.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

DEFAULT_DISCOVERY_TTL = 3600.0
"""How long a discovery document is used before it is fetched again (providers change it rarely)."""


class DiscoveryCache:
    """Discovery documents by issuer (with or without its trailing slash: one issuer)."""

    def __init__(self, ttl: float = DEFAULT_DISCOVERY_TTL) -> None:
        self.ttl = ttl
        self._documents: dict[str, tuple[float, dict[str, Any]]] = {}

    async def document(
        self, issuer: str, fetch: Callable[[], Awaitable[dict[str, Any]]], *, refresh: bool = False
    ) -> dict[str, Any]:
        """`issuer`'s document: the remembered one while fresh (unless `refresh`), else `await fetch()`."""
        key = issuer.rstrip("/")
        remembered = self._documents.get(key)
        if remembered is not None and not refresh and time.monotonic() - remembered[0] < self.ttl:
            return remembered[1]
        document = await fetch()
        self._documents[key] = (time.monotonic(), document)
        return document


@lru_cache(maxsize=1)
def process_discovery() -> DiscoveryCache:
    """This process's cache (shared by `shared_verifier` and `CIBAClient.shared`)."""
    return DiscoveryCache()


__all__ = ["DEFAULT_DISCOVERY_TTL", "DiscoveryCache", "process_discovery"]
