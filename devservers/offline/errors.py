"""OpenAI-style error answers, `{"error": {"message", "type", "param", "code"}}`, so that the `openai` SDK
raises its usual exception types (`BadRequestError`, `NotFoundError`...) against the offline model too."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["BadRequest", "http_error", "openai_error"]


class BadRequest(Exception):
    """A chat-completions request the model refuses (400 `invalid_request_error`), naming the `param` at
    fault and an OpenAI error `code` where OpenAI gives one."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def openai_error(
    status: int, message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """An error answer with OpenAI's body: `kind` is its `type` (`invalid_request_error`, `server_error`)."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for Starlette's own errors (404, 405) and anything unexpected (500)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return openai_error(status, str(message), kind=kind)
