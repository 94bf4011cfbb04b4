"""The CIBA wire format: a request checked before it is sent, and each answer parsed into a type.

Pure functions over `httpx.Response` objects and JSON documents, no I/O: `CIBAClient` sends, these read.
A malformed answer (HTML from a proxy, a body without `auth_req_id`) becomes a `CIBAError`, never a
`KeyError` deep in the agent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from auth.issuer import origin
from runtime.backoff import retry_after_seconds
from tools.ciba.types import (
    DEFAULT_INTERVAL,
    SLOW_DOWN_INCREMENT,
    AccessDenied,
    Approved,
    BackchannelResponse,
    CIBAError,
    ExpiredToken,
    InvalidGrant,
    Pending,
    PollResult,
    ProviderMetadata,
    SlowDown,
    TokenSet,
    validate_binding_message,
)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response body if it is a JSON object, else None (a provider answering HTML or garbage)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def oauth_error(response: httpx.Response) -> tuple[str | None, str | None]:
    body = json_object(response)
    if body is None:
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        error if isinstance(error, str) else None,
        description[:300] if isinstance(description, str) else None,
    )


def scopes_with_openid(scope: str | Sequence[str]) -> list[str]:
    items = scope.split() if isinstance(scope, str) else [s for part in scope for s in str(part).split()]
    return ["openid"] + [s for s in dict.fromkeys(items) if s != "openid"]


def checked_request(
    user_id: object,
    binding_message: str,
    requested_expiry: int | None,
    authorization_details: Sequence[Mapping[str, Any]] | None,
) -> str | None:
    """Refuse a request before it is sent (`InvalidBindingMessage`, `CIBAError`); the RAR JSON, if any."""
    validate_binding_message(binding_message)
    if not isinstance(user_id, str) or not user_id.strip():
        raise CIBAError("invalid_request", "a user id is required for the login hint")
    if requested_expiry is not None and (
        isinstance(requested_expiry, bool) or not isinstance(requested_expiry, int) or requested_expiry <= 0
    ):
        raise CIBAError("invalid_request", "requested_expiry must be a positive number of seconds")
    if authorization_details is None:
        return None
    details = list(authorization_details)
    if not all(isinstance(d, Mapping) and isinstance(d.get("type"), str) for d in details):
        raise CIBAError("invalid_request", "each authorization_details entry needs a string 'type'")
    return json.dumps([dict(d) for d in details], separators=(",", ":"))


def backchannel_response(response: httpx.Response) -> BackchannelResponse:
    """The provider's answer to a backchannel request, or `CIBAError` (a refusal, or a malformed answer)."""
    if response.status_code != 200:
        error, description = oauth_error(response)
        raise CIBAError(error or "invalid_response", description, response.status_code)
    body = json_object(response)
    if body is None or not isinstance(body.get("auth_req_id"), str) or not body["auth_req_id"]:
        raise CIBAError("invalid_response", "the backchannel response has no auth_req_id", response.status_code)
    expires_in = body.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise CIBAError("invalid_response", "the backchannel response has no valid expires_in", 200)
    interval = body.get("interval")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        interval = DEFAULT_INTERVAL
    return BackchannelResponse(auth_req_id=body["auth_req_id"], expires_in=int(expires_in), interval=int(interval))


def token_set(response: httpx.Response) -> TokenSet:
    body = json_object(response)
    if body is None or not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise CIBAError("invalid_response", "the token response has no access_token", response.status_code)
    token_type = body.get("token_type")
    expires_in = body.get("expires_in")
    scope = body.get("scope")
    details = body.get("authorization_details")
    return TokenSet(
        access_token=body["access_token"],
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        expires_in=int(expires_in)
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
        else None,
        scope=scope.split() if isinstance(scope, str) else [],
        id_token=body.get("id_token") if isinstance(body.get("id_token"), str) else None,
        refresh_token=body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else None,
        authorization_details=details if isinstance(details, list) else None,
    )


def poll_outcome(response: httpx.Response, interval: int) -> PollResult:
    """The token endpoint's answer to a CIBA poll (CIBA Core 1.0 section 11); a client error other than
    the CIBA outcomes (`invalid_client`, `invalid_request`, ...) raises `CIBAError`."""
    if response.status_code == 200:
        return Approved(token_set(response))
    error, description = oauth_error(response)
    if error == "authorization_pending":
        return Pending(interval=interval)
    if error == "slow_down" or (error is None and response.status_code == 429):
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return SlowDown(interval=interval + SLOW_DOWN_INCREMENT, retry_after=retry_after)
    if error == "access_denied":
        return AccessDenied(description)
    if error == "expired_token":
        return ExpiredToken(description)
    if error == "invalid_grant":
        return InvalidGrant(description)
    raise CIBAError(error or "invalid_response", description, response.status_code)


def provider_metadata(document: object, issuer: str) -> ProviderMetadata:
    """The CIBA endpoints of `issuer`'s discovery document, checked: the same issuer, both endpoints on
    the issuer's origin (the client's credentials go there), poll mode offered; else `CIBAError`."""
    if not isinstance(document, dict):
        raise CIBAError("invalid_configuration", "the discovery document is not a JSON object")
    named = document.get("issuer")
    if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
        raise CIBAError("invalid_configuration", "the discovery document names another issuer")
    token_endpoint = document.get("token_endpoint")
    backchannel = document.get("backchannel_authentication_endpoint")
    if not isinstance(token_endpoint, str) or not token_endpoint:
        raise CIBAError("invalid_configuration", "the discovery document has no token_endpoint")
    if not isinstance(backchannel, str) or not backchannel:
        raise CIBAError("invalid_configuration", "the provider does not advertise CIBA (no backchannel endpoint)")
    for name, endpoint in (("token_endpoint", token_endpoint), ("backchannel endpoint", backchannel)):
        if origin(endpoint) != origin(issuer):
            raise CIBAError("invalid_configuration", f"the discovery document's {name} is not on the issuer's origin")
    modes = document.get("backchannel_token_delivery_modes_supported")
    if isinstance(modes, list) and "poll" not in modes:
        raise CIBAError("invalid_configuration", "the provider does not support the CIBA poll mode")
    jwks_uri = document.get("jwks_uri")
    return ProviderMetadata(
        issuer=named,
        token_endpoint=token_endpoint,
        backchannel_authentication_endpoint=backchannel,
        jwks_uri=jwks_uri if isinstance(jwks_uri, str) else None,
        raw=document,
    )
