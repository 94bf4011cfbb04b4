"""Which client an HTTP request to the dev authorization server authenticates as.

The bc-authorize and token endpoints accept exactly one of `client_secret_basic` (an `Authorization: Basic`
header), `client_secret_post` (`client_id` and `client_secret` in the form) and `private_key_jwt` (a
`client_assertion`), as Auth0 does: two at once, or none, is refused. This module reads the request and
picks the method; checking the credential itself is the state's (`AuthzState.check_client` and
`check_client_assertion`), which holds the registered clients and the assertions already seen.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from starlette.requests import Request

from devservers.authz.protocol import OAuthError
from devservers.authz.state import AuthzState

__all__ = ["authenticate_client"]

_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="dev-authz"'}
_TWO_METHODS = "use one client authentication method, not two"


def authenticate_client(state: AuthzState, request: Request, form: dict[str, str]) -> str:
    """The authenticated client id (`client_secret_basic`, `client_secret_post` or `private_key_jwt`, one)."""
    if "client_assertion" in form or "client_assertion_type" in form:
        if request.headers.get("authorization") is not None or "client_secret" in form:
            raise OAuthError("invalid_request", _TWO_METHODS)
        return state.check_client_assertion(form)
    header = request.headers.get("authorization")
    if header is not None:
        return _basic_client(state, header, form)
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        raise OAuthError("invalid_client", "client authentication is required", 401)
    if not state.check_client(client_id, secret):
        raise OAuthError("invalid_client", "client authentication failed", 401)
    return client_id


def _basic_client(state: AuthzState, header: str, form: dict[str, str]) -> str:
    """`client_secret_basic`: the client id of a valid `Authorization: Basic` header (RFC 6749 2.3.1)."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "unsupported client authentication", 401, _BASIC_CHALLENGE)
    if "client_secret" in form:
        raise OAuthError("invalid_request", _TWO_METHODS)
    try:
        raw_id, sep, raw_secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials", 401, _BASIC_CHALLENGE) from None
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    if not sep or ("client_id" in form and form["client_id"] != client_id):
        raise OAuthError("invalid_client", "malformed Basic credentials", 401, _BASIC_CHALLENGE)
    if not state.check_client(client_id, secret):
        raise OAuthError("invalid_client", "client authentication failed", 401, _BASIC_CHALLENGE)
    return client_id
