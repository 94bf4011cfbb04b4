"""The embedded dev authorization server's import path: OIDC discovery, JWKS, dev login and CIBA.

The server lives in the `devservers.authz` package, one concern per module (its docstring has the map
and the reasons). Callers (`agentrt.stack`, the tests, the benchmark) import from here, so this module
only re-exports:

    server = DevAuthorizationServer(api_audience="https://agents.test/api").start()
    server.issuer       # "http://127.0.0.1:PORT/"  (Auth0 style: trailing slash)
    ...
    server.stop()
"""

from __future__ import annotations

from devservers.authz.app import create_authz_app
from devservers.authz.ciba_request import CIBARequest
from devservers.authz.keys import SigningKey
from devservers.authz.protocol import OAuthError
from devservers.authz.server import DevAuthorizationServer
from devservers.authz.state import AuthzState, create_state

__all__ = [
    "AuthzState",
    "CIBARequest",
    "DevAuthorizationServer",
    "OAuthError",
    "SigningKey",
    "create_authz_app",
    "create_state",
]
