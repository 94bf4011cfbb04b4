"""`LocalOnly`: what keeps the embedded dev servers to this machine's own callers.

They listen on loopback only, but a web page can still reach them through the user's browser: by DNS
rebinding (a name the attacker controls, resolving to 127.0.0.1, sends its own `Host`) or by a cross-site
form or fetch (CSRF: approve a pending purchase, sign in as a demo user). So a request must name this
machine in its `Host`, and a state-changing one must not come from another origin (`Origin`,
`Sec-Fetch-Site`). Scripts and the agents send no `Origin` and are not affected.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOST_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(
    headers: dict[str, str], method: str, *, check_write: bool = True, other_hosts: frozenset[str] = frozenset()
) -> tuple[int, str, str] | None:
    """(status, error, detail) for a request that must be refused, else None: 421 for a `Host` that is not
    this machine (nor one of `other_hosts`; "*" allows any), 403 for a cross-origin write when
    `check_write`. `headers` are lower-cased names."""
    host = headers.get("host", "")
    name = _host_name(host).lower()
    if name not in LOCAL_HOST_NAMES and name not in other_hosts and "*" not in other_hosts:
        return (421, "misdirected_request", "this development server answers only requests to this machine")
    if check_write and method not in SAFE_METHODS:
        origin = headers.get("origin")
        if (origin is not None and origin != f"http://{host}") or headers.get("sec-fetch-site") == "cross-site":
            return (403, "cross_origin", "a request from another site may not change anything here")
    return None


class LocalOnly:
    """ASGI middleware: 421 for a `Host` that is not this machine, 403 for a cross-origin write."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refused = refusal(headers, scope.get("method", "GET"))
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, error, detail = refused
        body = json.dumps({"error": error, "error_description": detail, "detail": detail}).encode()
        start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        await send(start)
        await send({"type": "http.response.body", "body": body})
