"""Checking a `bc-authorize` request (CIBA Core 7.1) the way Auth0 does, before anything is stored.

This is where the dev server is strict on purpose: exactly one hint naming a known user, `openid` in a
well-formed scope, Auth0's binding message rule, a bounded `requested_expiry`, well-formed RAR
`authorization_details`, and a user with a device to push to. The checks run in that order and the first
one failed is the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jwt

from devservers.authz.protocol import SCOPE_TOKEN_RE, OAuthError
from devservers.authz.state import AuthzState
from tools.ciba.types import BINDING_MESSAGE_RE

__all__ = ["BackchannelParams", "parse_authorization_details", "parse_backchannel_request", "resolve_hint"]

_HINTS = ("login_hint", "id_token_hint", "login_hint_token")


@dataclass(frozen=True)
class BackchannelParams:
    """A valid backchannel request's parameters: what `AuthzState.create_request` needs besides the client."""

    username: str
    sub: str
    scopes: list[str]
    audience: str
    binding_message: str
    authorization_details: list[dict[str, Any]] | None
    expires_in: int
    client_notification_token: str | None


def parse_backchannel_request(state: AuthzState, form: dict[str, str]) -> BackchannelParams:
    """The parameters of an authenticated client's request, or the `OAuthError` that refuses it."""
    scopes = _scopes(form)
    username, sub = resolve_hint(state, form)
    binding = _binding_message(form)
    expires_in = _expires_in(state, form)
    audience = form.get("audience") or state.issuer + "userinfo"
    notification_token = form.get("client_notification_token") or None
    if notification_token is not None and len(notification_token) > 1024:
        raise OAuthError("invalid_request", "client_notification_token is too long")
    details = (
        parse_authorization_details(form.get("authorization_details"))
        if state.authorization_details_supported
        else None
    )
    if username in state.users_without_push or sub in state.users_without_push:
        raise OAuthError("invalid_request", "the user does not have push notifications enabled")
    return BackchannelParams(
        username=username,
        sub=sub,
        scopes=scopes,
        audience=audience,
        binding_message=binding,
        authorization_details=details,
        expires_in=expires_in,
        client_notification_token=notification_token,
    )


def _scopes(form: dict[str, str]) -> list[str]:
    """The requested scope tokens, once each in their order; `openid` is required."""
    scopes = form.get("scope", "").split()
    if not all(SCOPE_TOKEN_RE.fullmatch(s) for s in scopes):
        raise OAuthError("invalid_scope", "the scope is malformed")
    if "openid" not in scopes:
        raise OAuthError("invalid_scope", "the scope must include openid")
    return list(dict.fromkeys(scopes))


def _binding_message(form: dict[str, str]) -> str:
    """The required binding message, by Auth0's rule (1-64 of a small character set)."""
    binding = form.get("binding_message")
    if binding is None:
        raise OAuthError("invalid_request", "binding_message is required")
    if not BINDING_MESSAGE_RE.fullmatch(binding) or not binding.strip():
        raise OAuthError(
            "invalid_binding_message",
            "binding_message must be 1-64 letters, digits, spaces or +-_.,:#",
        )
    return binding


def _expires_in(state: AuthzState, form: dict[str, str]) -> int:
    """The request's lifetime in seconds: `requested_expiry` if given (bounded), else the default."""
    expiry_raw = form.get("requested_expiry")
    if expiry_raw is None:
        return state.default_expiry
    if not expiry_raw.isdigit() or not 1 <= int(expiry_raw) <= state.max_requested_expiry:
        raise OAuthError("invalid_request", f"requested_expiry must be 1-{state.max_requested_expiry} seconds")
    return int(expiry_raw)


def resolve_hint(state: AuthzState, form: dict[str, str]) -> tuple[str, str]:
    """(username, sub) of the user the request is for; exactly one hint is allowed (CIBA 7.1)."""
    hints = [name for name in _HINTS if form.get(name)]
    if len(hints) != 1:
        raise OAuthError("invalid_request", "exactly one of login_hint, id_token_hint, login_hint_token is required")
    name = hints[0]
    value = form[name]
    subject: str | None
    if name == "login_hint_token":
        raise OAuthError("invalid_request", "login_hint_token is not supported")
    if name == "id_token_hint":
        subject = _id_token_subject(state, value)
    elif value.lstrip().startswith("{"):
        subject = _iss_sub_subject(state, value)
    else:
        subject = value
    found = state.user_by_any(subject) if subject else None
    if found is None:
        raise OAuthError("unknown_user_id", "the user is unknown")
    return found


def _id_token_subject(state: AuthzState, value: str) -> str | None:
    """The `sub` of an ID token this issuer signed, whatever its audience and even if it has expired."""
    try:
        claims = jwt.decode(
            value,
            state.signing_key.private_key.public_key(),
            algorithms=["RS256"],
            issuer=state.issuer,
            options={"verify_aud": False, "verify_exp": False},
        )
    except jwt.InvalidTokenError:
        raise OAuthError("invalid_request", "id_token_hint is not an ID token of this issuer") from None
    return claims.get("sub") if isinstance(claims.get("sub"), str) else None


def _iss_sub_subject(state: AuthzState, value: str) -> str | None:
    """The `sub` of a JSON `login_hint` in Auth0's `iss_sub` format, naming this issuer."""
    try:
        hint = json.loads(value)
    except ValueError:
        raise OAuthError("invalid_request", "login_hint is not valid JSON") from None
    if not isinstance(hint, dict) or hint.get("format") != "iss_sub":
        raise OAuthError("invalid_request", "login_hint must use the iss_sub format")
    if hint.get("iss") != state.issuer:
        raise OAuthError("invalid_request", "login_hint names another issuer")
    return hint.get("sub") if isinstance(hint.get("sub"), str) else None


def parse_authorization_details(raw: str | None) -> list[dict[str, Any]] | None:
    """RAR (RFC 9396) `authorization_details`: a non-empty JSON array of objects, each with a `type`."""
    if raw is None:
        return None
    try:
        details = json.loads(raw)
    except ValueError:
        raise OAuthError("invalid_authorization_details", "authorization_details is not valid JSON") from None
    if not isinstance(details, list) or not details:
        raise OAuthError("invalid_authorization_details", "authorization_details must be a non-empty JSON array")
    for entry in details:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or not entry["type"]:
            raise OAuthError("invalid_authorization_details", "each authorization_details entry needs a type")
    return details
