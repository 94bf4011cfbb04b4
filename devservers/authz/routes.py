"""The dev authorization server's HTTP handlers: OIDC discovery, JWKS, CIBA, dev login and the phone.

Each handler is a plain module-level function that finds the server's `AuthzState` on the app
(`request.app.state.authz`) and the endpoint layout it was built with (`request.app.state.endpoint_layout`),
so the handlers hold no state of their own and a new app over the same state is a restart. `app` puts
them on their paths; the request checks they rely on live in `client_auth` and `backchannel`.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from devservers.authz import pages
from devservers.authz.backchannel import parse_backchannel_request
from devservers.authz.ciba_request import STATUSES
from devservers.authz.client_auth import authenticate_client
from devservers.authz.protocol import CIBA_GRANT_TYPE, NO_STORE, EndpointLayout, OAuthError, read_form
from devservers.authz.state import AuthzState

__all__ = [
    "approvals_form",
    "approvals_fragment",
    "approvals_page",
    "approve",
    "authz_state",
    "bc_authorize",
    "deny",
    "discovery",
    "index",
    "jwks",
    "list_requests",
    "login",
    "stats",
    "token",
]

logger = logging.getLogger("devservers.authz_server")  # the name the server has always logged under


def authz_state(request: Request) -> AuthzState:
    """The state of the server that `request` came to."""
    state: AuthzState = request.app.state.authz
    return state


def _endpoint_layout(request: Request) -> EndpointLayout:
    layout: EndpointLayout = request.app.state.endpoint_layout
    return layout


# -- OpenID provider -------------------------------------------------------------------------------------


async def discovery(request: Request) -> JSONResponse:
    """`/.well-known/openid-configuration`: where every endpoint is, and what the server supports."""
    state, paths = authz_state(request), _endpoint_layout(request)
    with state.lock:
        state.discovery_requests += 1
    base = state.issuer
    return JSONResponse(
        {
            "issuer": base,
            "jwks_uri": base + paths["jwks"],
            "token_endpoint": base + paths["token"],
            "backchannel_authentication_endpoint": base + paths["backchannel"],
            "grant_types_supported": [CIBA_GRANT_TYPE],
            "backchannel_token_delivery_modes_supported": ["poll", "ping"],
            "backchannel_user_code_parameter_supported": False,
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "dev_login_endpoint": base + "dev/login",
            "dev_approvals_page": base + "approvals",
            **({"authorization_details_types_supported": ["*"]} if state.authorization_details_supported else {}),
        }
    )


async def jwks(request: Request) -> JSONResponse:
    """The public signing key, as a JWK set."""
    return JSONResponse({"keys": [authz_state(request).signing_key.public_jwk]})


async def bc_authorize(request: Request) -> Response:
    """CIBA's backchannel authentication endpoint: a client asks for a user's approval."""
    state = authz_state(request)
    with state.lock:
        state.backchannel_requests += 1
    try:
        form = await read_form(request)
        client_id = authenticate_client(state, request, form)
        if client_id in state.ciba_disabled_clients:
            raise OAuthError("unauthorized_client", "the client may not use CIBA")
        params = parse_backchannel_request(state, form)
    except OAuthError as exc:
        logger.info("bc-authorize refused: %s", exc.error)
        return exc.response()
    created = state.create_request(
        client_id=client_id,
        username=params.username,
        sub=params.sub,
        scopes=params.scopes,
        audience=params.audience,
        binding_message=params.binding_message,
        authorization_details=params.authorization_details,
        expires_in=params.expires_in,
        client_notification_token=params.client_notification_token,
    )
    return JSONResponse(
        {"auth_req_id": created.auth_req_id, "expires_in": params.expires_in, "interval": created.interval},
        headers=NO_STORE,
    )


async def token(request: Request) -> Response:
    """The token endpoint, CIBA grant only: tokens once approved, else why not yet (or never)."""
    state = authz_state(request)
    with state.lock:
        state.token_requests += 1
    try:
        form = await read_form(request)
        client_id = authenticate_client(state, request, form)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != CIBA_GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "only the CIBA grant is supported")
        if client_id in state.ciba_disabled_clients:
            raise OAuthError("unauthorized_client", "the client may not use CIBA")
        auth_req_id = form.get("auth_req_id")
        if not auth_req_id:
            raise OAuthError("invalid_request", "auth_req_id is required")
        body = state.poll(client_id, auth_req_id)
    except OAuthError as exc:
        return exc.response()
    return JSONResponse(body, headers=NO_STORE)


# -- development helpers -----------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    """`GET`: the dev login page; `POST` (JSON or form `username`): a user access token for the API."""
    state = authz_state(request)
    if request.method == "GET":
        return HTMLResponse(pages.login_page(state))
    username: Any = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        username = payload.get("username") if isinstance(payload, dict) else None
    else:
        try:
            username = (await read_form(request)).get("username")
        except OAuthError as exc:
            return exc.response()
    if not isinstance(username, str) or not username:
        return OAuthError("invalid_request", "username is required").response()
    try:
        return JSONResponse(state.login_token(username), headers=NO_STORE)
    except LookupError:
        return OAuthError("invalid_request", "unknown user", 404).response()


async def list_requests(request: Request) -> JSONResponse:
    """The requests as JSON (`?user=`, `?status=`), for tests, the CLI and the benchmark."""
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        return JSONResponse({"error": "invalid_request", "error_description": "unknown status"}, 400)
    return JSONResponse(authz_state(request).list_requests(request.query_params.get("user") or None, status))


def _decide(request: Request, approve: bool) -> JSONResponse:
    try:
        return JSONResponse(authz_state(request).decide(request.path_params["request_id"], approve))
    except LookupError:
        return JSONResponse({"error": "not_found", "error_description": "no such request"}, 404)
    except ValueError as exc:
        return JSONResponse({"error": "conflict", "error_description": str(exc)}, 409)


async def approve(request: Request) -> JSONResponse:
    """Approve a request, as the user would on their phone."""
    return _decide(request, True)


async def deny(request: Request) -> JSONResponse:
    """Deny a request, as the user would on their phone."""
    return _decide(request, False)


async def stats(request: Request) -> JSONResponse:
    """Counters for tests and the benchmark (requests, polls, pings)."""
    return JSONResponse(authz_state(request).stats())


# -- the phone -----------------------------------------------------------------------------------------


async def approvals_page(request: Request) -> HTMLResponse:
    """The approvals page, for everyone or for `?user=`."""
    user = request.query_params.get("user") or None
    return HTMLResponse(pages.approvals_page(authz_state(request), user))


async def approvals_fragment(request: Request) -> HTMLResponse:
    """The page's request list alone, which its script fetches every second."""
    user = request.query_params.get("user") or None
    return HTMLResponse(pages.requests_fragment(authz_state(request), user), headers={"Cache-Control": "no-store"})


async def approvals_form(request: Request) -> Response:
    """The no-JavaScript path: a plain form post, then back to the page."""
    if request.path_params["action"] not in ("approve", "deny"):
        return JSONResponse({"error": "not_found", "error_description": "unknown action"}, 404)
    result = _decide(request, request.path_params["action"] == "approve")
    if result.status_code >= 400:
        return result
    return RedirectResponse(str(request.url_for("approvals")), status_code=303)


async def index(request: Request) -> Response:
    """`/` leads to the approvals page."""
    return RedirectResponse(str(request.url_for("approvals")), status_code=307)
