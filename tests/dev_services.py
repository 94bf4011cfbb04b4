"""The env vars that point agents at the dev services, shared by the session's chat world and the
scenarios that run as processes of their own (which must not import the session's conftest)."""

from __future__ import annotations

import secrets

from devservers.authz_server import DevAuthorizationServer
from devservers.checkout_api import CheckoutServer
from devservers.offline_model import OfflineModelServer

API_AUDIENCE = "https://agents.test/api"
CHECKOUT_AUDIENCE = "http://localhost:5000/api/checkout"


def services_env(authz: DevAuthorizationServer, checkout: CheckoutServer, model: OfflineModelServer) -> dict[str, str]:
    """What the agents need to reach the dev services (a fresh encryption key each time)."""
    return {
        "AUTH_ISSUER": authz.issuer,
        "AUTH0_CLIENT_ID": authz.client_id,
        "AUTH0_CLIENT_SECRET": authz.client_secret,
        "AUTH0_AUDIENCE": API_AUDIENCE,
        "AUTH0_SESSION_ENCRYPTION_KEY": secrets.token_hex(32),
        "CHECKOUT_AUDIENCE": CHECKOUT_AUDIENCE,
        "CHECKOUT_API_URL": checkout.api_url,
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "offline",
        "OPENAI_MODEL": "offline-demo-model",
    }
