"""The OAuth wire vocabulary of the dev authorization server: error responses, endpoint layouts, form bodies.

Both the state (which refuses a poll with `OAuthError`) and the HTTP handlers (which read forms and turn
errors into responses) speak it, so it sits below both of them and imports neither.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = [
    "CIBA_GRANT_TYPE",
    "ENDPOINT_PATHS",
    "NO_STORE",
    "SCOPE_TOKEN_RE",
    "SLOW_DOWN_INCREMENT",
    "EndpointLayout",
    "OAuthError",
    "read_form",
]

CIBA_GRANT_TYPE = "urn:openid:params:grant-type:ciba"
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
SLOW_DOWN_INCREMENT = 5
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

EndpointLayout = dict[str, str]
"""Endpoint name (`jwks`, `token`, `backchannel`) -> its path below the issuer, without a leading slash."""

ENDPOINT_PATHS: dict[str, EndpointLayout] = {
    "auth0": {"jwks": ".well-known/jwks.json", "token": "oauth/token", "backchannel": "bc-authorize"},
    "generic": {"jwks": "jwks", "token": "oauth2/token", "backchannel": "oauth2/bc-authorize"},
}
"""Where the server puts its endpoints: Auth0's paths, or other ones, to prove that clients take every
endpoint from discovery (an OpenID provider may put them anywhere)."""


class OAuthError(Exception):
    """An OAuth error response: `{"error", "error_description"}` with `status` and optional headers."""

    def __init__(
        self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers={**NO_STORE, **self.headers},
        )


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body, refusing repeated parameters (RFC 6749 section 3.1) and other encodings."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not valid form data") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"the parameter {name} is repeated")
        form[name] = value
    return form
