"""`RequestGuard`: the cheap refusals, before FastAPI parses anything.

Thread routes without a bearer token get 401 and bodies over `AGENTRT_MAX_BODY_BYTES` get 413 (by
Content-Length, or while a chunked body streams in), so neither costs a parse, a token check or an actor.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentrt.ingress.errors import BEARER_REQUIRED, error_response
from agentrt.ingress.settings import IngressSettings


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def _needs_bearer(path: str) -> bool:
    return path == "/threads" or path.startswith("/threads/")


def _has_bearer(headers: dict[bytes, bytes]) -> bool:
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and bool(value.strip())


class RequestGuard:
    """ASGI middleware: 401 for a thread route without a bearer token, 413 for an oversize body."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or IngressSettings().max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope.get("path", ""), headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> ASGIApp | None:
        if _needs_bearer(path) and not _has_bearer(headers):
            return error_response(401, "unauthenticated", BEARER_REQUIRED, {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is None:
            return None
        try:
            too_big = int(length) > self.max_bytes
        except ValueError:
            return error_response(400, "bad_request", "invalid Content-Length header")
        if too_big:
            return error_response(413, "payload_too_large", f"the request body is larger than {self.max_bytes} bytes")
        return None
