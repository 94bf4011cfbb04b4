"""`RequestGuard`: the cheap refusals, before FastAPI parses anything.

Thread routes without a bearer token get 401 and bodies over `AGENTRT_MAX_BODY_BYTES` get 413 (by
Content-Length, or while a chunked body streams in), so neither costs a parse, a token check or an actor.
With the dev sign-in on (the dev authorization server hands anyone a demo user's token through
`/dev/login`), the API also keeps to this machine as the dev servers do (`devservers.local_only`): a `Host`
that is not this machine is 421 (a web page that rebinds its name to 127.0.0.1 cannot sign in as alice
and read her threads), and a cross-origin write to `/dev/*` is 403.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentrt.ingress.errors import BEARER_REQUIRED, error_response
from agentrt.ingress.settings import IngressSettings
from auth.verifier import bearer_token
from devservers.local_only import refusal as local_only_refusal


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def _needs_bearer(path: str) -> bool:
    return path in ("/threads", "/api/chat") or path.startswith(("/threads/", "/api/chat/"))


def _is_ai_sdk_chat(path: str) -> bool:
    """The AI SDK's chat endpoint: its transport sends the client's whole history with each message."""
    return path == "/api/chat"


def _has_bearer(headers: dict[bytes, bytes]) -> bool:
    return bearer_token(headers.get(b"authorization", b"").decode("latin-1")) is not None


class RequestGuard:
    """ASGI middleware: 401 for a thread route without a bearer token, 413 for an oversize body."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        settings = IngressSettings()
        self.max_bytes = max_bytes or settings.max_body_bytes
        self.max_chat_bytes = max(self.max_bytes, settings.max_chat_body_bytes)
        self.local_only = settings.dev_base() is not None
        self.other_hosts = settings.other_hosts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, scope.get("path", ""), headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        seen, cap = 0, self._cap(scope.get("path", ""))

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        await self.app(scope, limited_receive, send)

    def _refusal(self, scope: Scope, path: str, headers: dict[bytes, bytes]) -> ASGIApp | None:
        if self.local_only:
            named = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers.items()}
            method = scope.get("method", "GET")
            refused = local_only_refusal(
                named, method, check_write=path.startswith("/dev/"), other_hosts=self.other_hosts
            )
            if refused is not None:
                return error_response(*refused)
        if _needs_bearer(path) and not _has_bearer(headers):
            return error_response(401, "unauthenticated", BEARER_REQUIRED, {"WWW-Authenticate": "Bearer"})
        length, cap = headers.get(b"content-length"), self._cap(path)
        if length is None:
            return None
        try:
            too_big = int(length) > cap
        except ValueError:
            return error_response(400, "bad_request", "invalid Content-Length header")
        if too_big:
            return error_response(413, "payload_too_large", f"the request body is larger than {cap} bytes")
        return None

    def _cap(self, path: str) -> int:
        return self.max_chat_bytes if _is_ai_sdk_chat(path) else self.max_bytes
