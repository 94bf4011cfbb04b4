"""The checkout API's one error shape, `{"error": <code>, "detail": <text>}`, and the handlers that give it.

Routes raise `CheckoutError`; FastAPI's own 404/405/422 and any unexpected exception are answered in the
same shape by `EXCEPTION_HANDLERS`, so a client never has to parse a second format, and none echoes a token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["EXCEPTION_HANDLERS", "CheckoutError", "error_response"]

log = logging.getLogger("devservers.checkout_api")  # the name the checkout API has always logged under


class CheckoutError(Exception):
    """An error answered as `{"error": code, "detail": detail}` with `status`."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer for one error."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def _checkout_error(_request: Request, exc: CheckoutError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, exc.detail, getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(422, "invalid_request", problems)


async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("checkout API error: %s", type(exc).__name__)
    return error_response(500, "internal_error", "the checkout API failed")


EXCEPTION_HANDLERS: Mapping[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    CheckoutError: _checkout_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
    Exception: _internal_error,
}
"""The app's exception handlers: every failure, expected or not, in the one error shape."""
