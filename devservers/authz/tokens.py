"""The token bodies the dev authorization server hands out: CIBA grant responses and dev login tokens.

Kept apart from the state so that what a token says (claims, lifetimes, which extras a scope adds) reads
in one place, free of locking and polling rules: these functions only sign what they are given.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from devservers.authz.ciba_request import CIBARequest
from devservers.authz.keys import SigningKey

__all__ = ["ciba_token_response", "login_token_response"]


def ciba_token_response(
    key: SigningKey, *, issuer: str, request: CIBARequest, now: float, lifetime: int
) -> dict[str, Any]:
    """The token endpoint's answer for an approved request: an access token for the request's audience,
    an ID token if `openid` was asked, a refresh token for `offline_access`, and the RAR details."""
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": request.sub,
        "aud": request.audience,
        "azp": request.client_id,
        "scope": " ".join(request.scopes),
        "iat": iat,
        "exp": iat + lifetime,
        "jti": uuid.uuid4().hex,
    }
    if request.authorization_details is not None:
        claims["authorization_details"] = request.authorization_details
    body: dict[str, Any] = {
        "access_token": key.sign(claims),
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": " ".join(request.scopes),
    }
    if "openid" in request.scopes:
        body["id_token"] = key.sign(
            {
                "iss": issuer,
                "sub": request.sub,
                "aud": request.client_id,
                "iat": iat,
                "exp": iat + lifetime,
                "auth_time": int(request.decided_at or now),
            }
        )
    if "offline_access" in request.scopes:
        body["refresh_token"] = secrets.token_urlsafe(32)
    if request.authorization_details is not None:
        body["authorization_details"] = request.authorization_details
    return body


def login_token_response(
    key: SigningKey, *, issuer: str, audience: str, name: str, sub: str, now: float, lifetime: int
) -> dict[str, Any]:
    """A user access token for the API `audience` (what a browser login would give the chat page)."""
    iat = int(now)
    token = key.sign(
        {
            "iss": issuer,
            "sub": sub,
            "aud": audience,
            "scope": "openid profile",
            "iat": iat,
            "exp": iat + lifetime,
            "name": name,
            "jti": uuid.uuid4().hex,
        }
    )
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "sub": sub,
        "username": name,
    }
