"""Every error the API answers is JSON `{"error": code, "detail": message}` with a fitting status.

`HttpProblem` is what the routes raise; the agents' typed errors (`ChatError` and its subclasses, a bad id,
missing auth configuration) and FastAPI's own (validation, 404, 405, ...) are mapped here too, so no error
reaches the client as HTML or as a bare 500 with a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from agents.errors import ChatError
from auth.errors import AuthConfigError
from runtime import InvalidAgentIdError

logger = logging.getLogger("agentrt.ingress")

BEARER_REQUIRED = "an 'Authorization: Bearer <token>' header is required"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class HttpProblem(Exception):
    """An error answer: `status_code`, a stable `error` code, a `detail` for people, extra `headers`."""

    def __init__(self, status_code: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.headers = headers


def bearer_required() -> HttpProblem:
    return HttpProblem(401, "unauthenticated", BEARER_REQUIRED, {"WWW-Authenticate": "Bearer"})


def agent_unavailable() -> HttpProblem:
    logger.warning("agent unavailable")
    detail = "the thread's agent is unavailable; retry shortly"
    return HttpProblem(503, "agent_unavailable", detail, {"Retry-After": "1"})


def error_response(status: int, error: str, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=dict(headers or {}))


def error_payload(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, detail) of an error, for a stream's `failed` event."""
    if isinstance(exc, ChatError):
        return exc.status_code, exc.code, str(exc)
    if isinstance(exc, InvalidAgentIdError):
        return 422, "invalid_thread_id", str(exc)
    if isinstance(exc, HttpProblem):
        return exc.status_code, exc.error, str(exc.detail)
    return 500, "internal_error", "the request failed"


async def _chat_error(_request: Request, exc: ChatError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status_code == 401 else None
    if exc.status_code == 503:
        headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
    return error_response(exc.status_code, exc.code, str(exc), headers)


async def _bad_id(_request: Request, exc: InvalidAgentIdError) -> JSONResponse:
    return error_response(422, "invalid_thread_id", str(exc))


async def _misconfigured(_request: Request, exc: AuthConfigError) -> JSONResponse:
    logger.error("authorization is not configured: %s", exc)  # names the variable only, never a value
    return error_response(500, "server_misconfigured", str(exc))


async def _problem(_request: Request, exc: HttpProblem) -> JSONResponse:
    return error_response(exc.status_code, exc.error, exc.detail, exc.headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors()
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return error_response(422, "invalid_json", "the request body is not valid JSON")
    summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems) or "invalid request"
    return JSONResponse({"error": "invalid_request", "detail": summary, "problems": problems}, status_code=422)


def allowed_methods(request: Request) -> str:
    """Every method some route of this path takes: Starlette's 405 names only the first route's (and
    `POST /threads` and `GET /threads` are two routes). The routes are those the app lists in
    `app.state.method_routes` (FastAPI's own router nests included routers out of reach)."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "method_routes", ()):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return error_response(exc.status_code, code, exc.detail, headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A 500 is a bug: besides the replica's log, it goes to the root's failure journal (`agentrt logs`),
    scrubbed like the agents' failures, where the people running the service look."""
    from runtime.failures import record_failure
    from runtime.settings import runtime_settings

    logger.exception("unhandled error: %s", type(exc).__name__)
    record_failure(runtime_settings().storage_dir, "ingress", f"{request.method} {request.url.path}", exc)
    return error_response(500, "internal_error", "the request failed")


def install_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(ChatError, _chat_error)  # type: ignore[arg-type]
    api.add_exception_handler(InvalidAgentIdError, _bad_id)  # type: ignore[arg-type]
    api.add_exception_handler(AuthConfigError, _misconfigured)  # type: ignore[arg-type]
    api.add_exception_handler(HttpProblem, _problem)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    api.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    api.add_exception_handler(Exception, _internal_error)
