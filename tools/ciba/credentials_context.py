"""The approved CIBA credential visible to a tool while it runs (`get_ciba_credentials()`).

A contextvar, not a global: several tool calls of one agent may run in the same process, and each sees
only the credential bound to its own tool call id.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict


class CIBACredentials(BaseModel):
    """The token set of an approved CIBA request. Never log or return it."""

    model_config = ConfigDict(frozen=True)

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    expires_at: float | None = None
    scope: list[str] = []
    id_token: str | None = None
    refresh_token: str | None = None
    authorization_details: list[dict] | None = None

    def __repr__(self) -> str:  # keep tokens out of reprs, logs and tracebacks
        return f"CIBACredentials(token_type={self.token_type!r}, scope={self.scope!r}, access_token=***)"

    __str__ = __repr__


_credentials: contextvars.ContextVar[CIBACredentials | None] = contextvars.ContextVar("ciba_credentials", default=None)


def get_ciba_credentials() -> CIBACredentials | None:
    """The credential approved for the tool call now running, or None outside an approved call."""
    return _credentials.get()


get_async_authorization_credentials = get_ciba_credentials  # Auth0's newer name


@contextmanager
def use_ciba_credentials(credentials: CIBACredentials) -> Iterator[None]:
    """Make `credentials` visible to `get_ciba_credentials()` for the duration of the block."""
    token = _credentials.set(credentials)
    try:
        yield
    finally:
        _credentials.reset(token)
