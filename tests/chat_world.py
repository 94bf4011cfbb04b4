"""The embedded services a chat thread talks to, started for real on 127.0.0.1, and Ray configured for them.

Agents read their configuration from the environment of their own process, so the world's settings go
into the Ray job's `runtime_env` env vars: starting the world (re)starts the session's Ray cluster with
them, and `ray_init_kwargs()` keeps them for tests that restart Ray later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from devservers.authz_server import DevAuthorizationServer
from devservers.checkout_api import CheckoutServer
from devservers.offline_model import OfflineModelServer
from tests import conftest
from tests.dev_services import API_AUDIENCE, CHECKOUT_AUDIENCE, services_env  # noqa: F401  (re-exported)


@dataclass
class ChatWorld:
    authz: DevAuthorizationServer
    checkout: CheckoutServer
    model: OfflineModelServer
    env: dict[str, str] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    # -- users -------------------------------------------------------------------------------------
    def token(self, username: str) -> str:
        """A fresh access token for a demo user, for the agent API audience."""
        if username not in self._tokens:
            response = httpx.post(f"{self.authz.url}/dev/login", json={"username": username}, timeout=10)
            response.raise_for_status()
            self._tokens[username] = response.json()["access_token"]
        return self._tokens[username]

    def subject(self, username: str) -> str:
        response = httpx.post(f"{self.authz.url}/dev/login", json={"username": username}, timeout=10)
        response.raise_for_status()
        return response.json()["sub"]

    # -- the user's phone --------------------------------------------------------------------------
    def requests_for(self, username: str, status: str | None = "pending") -> list[dict[str, Any]]:
        params = {"user": username}
        if status:
            params["status"] = status
        response = httpx.get(f"{self.authz.url}/dev/ciba/requests", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def decide(self, request_id: str, approve: bool) -> None:
        action = "approve" if approve else "deny"
        response = httpx.post(f"{self.authz.url}/dev/ciba/requests/{request_id}/{action}", timeout=10)
        response.raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.authz.url}/dev/stats", timeout=10).json()

    def orders(self) -> int:
        return httpx.get(f"{self.checkout.api_url}/stats", timeout=10).json()["orders"]

    def stop(self) -> None:
        for server in (self.model, self.checkout, self.authz):
            server.stop()


def start_world(*, ciba_interval: int = 1) -> ChatWorld:
    # Its endpoints at non-Auth0 paths (`/jwks`, `/oauth2/token`, `/oauth2/bc-authorize`): every chat,
    # HTTP and browser test then proves that the agents, the ingress and the checkout API take each
    # endpoint from discovery (`agentrt serve`, in the CLI tests, serves Auth0's paths).
    authz = DevAuthorizationServer(
        api_audience=API_AUDIENCE,
        default_interval=ciba_interval,
        users=("alice", "bob", "carol", "dave"),  # dave: the API fuzzer's, used by no other test
        endpoint_paths="generic",
    ).start()
    checkout = CheckoutServer(issuer=authz.issuer, audience=CHECKOUT_AUDIENCE).start()
    model = OfflineModelServer().start()
    env = services_env(authz, checkout, model)
    conftest.set_world_env(env)
    return ChatWorld(authz=authz, checkout=checkout, model=model, env=env)


def deny_left_on_the_phone(world: ChatWorld, binding_message: str, user: str = "alice") -> int:
    """Deny the requests a test leaves pending on the user's phone (one withdrawn, or whose thread was
    deleted: CIBA cannot take a request back), so the tests that follow find the phone as they expect.
    Returns how many."""
    left = [r for r in world.requests_for(user) if r["binding_message"] == binding_message]
    for request in left:
        world.decide(request["id"], approve=False)
    return len(left)
