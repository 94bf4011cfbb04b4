"""`create_authz_app`: the dev authorization server as a Starlette app over an `AuthzState`.

The factory is the one place that knows the route table and the middleware (`LocalOnly` keeps the
unauthenticated approval endpoints to this machine, `Stalling` plays an unresponsive provider). It can be
called again over the same state, which is how a test restarts the server without losing anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from devservers.authz import routes
from devservers.authz.protocol import ENDPOINT_PATHS, EndpointLayout
from devservers.authz.state import AuthzState, create_state
from devservers.faults import Stalling
from devservers.local_only import LocalOnly

__all__ = ["create_authz_app"]


def create_authz_app(
    *,
    issuer: str | None = None,
    clients: dict[str, str] | None = None,
    users: Iterable[str] = ("alice", "bob"),
    api_audience: str | None = None,
    key_file: Path | None = None,
    state: AuthzState | None = None,
    **options: Any,
) -> Starlette:
    """The server as an ASGI app. Pass `state` to serve existing state (a restart), or the settings
    (`issuer`, `api_audience`, ...; `options` are `AuthzState` fields such as `default_interval`)."""
    if state is None:
        if issuer is None or api_audience is None:
            raise ValueError("create_authz_app needs `state`, or `issuer` and `api_audience`")
        state = create_state(
            issuer=issuer,
            api_audience=api_audience,
            clients=clients,
            users=users,
            key_file=key_file,
            **options,
        )
    layout = ENDPOINT_PATHS[state.endpoint_paths]
    app = Starlette(
        routes=_routes(layout),
        middleware=[Middleware(LocalOnly), Middleware(Stalling, stall=state.stall)],
    )
    app.state.authz = state
    app.state.endpoint_layout = layout
    return app


def _routes(paths: EndpointLayout) -> list[Route]:
    """The route table; the OAuth endpoints sit where `paths` (an `ENDPOINT_PATHS` layout) puts them."""
    return [
        Route("/", routes.index),
        Route("/.well-known/openid-configuration", routes.discovery),
        Route("/" + paths["jwks"], routes.jwks),
        Route("/" + paths["backchannel"], routes.bc_authorize, methods=["POST"]),
        Route("/" + paths["token"], routes.token, methods=["POST"]),
        Route("/dev/login", routes.login, methods=["GET", "POST"]),
        Route("/dev/ciba/requests", routes.list_requests),
        Route("/dev/ciba/requests/{request_id}/approve", routes.approve, methods=["POST"]),
        Route("/dev/ciba/requests/{request_id}/deny", routes.deny, methods=["POST"]),
        Route("/dev/stats", routes.stats),
        Route("/approvals", routes.approvals_page, name="approvals"),
        Route("/approvals/requests", routes.approvals_fragment),
        Route("/approvals/{request_id}/{action:str}", routes.approvals_form, methods=["POST"]),
    ]
