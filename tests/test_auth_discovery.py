"""One discovery document per process: the settings-made token verifier and CIBA client share it.

Every agent host and ingress replica verifies tokens and (for CIBA tools) talks to the provider; each
consumer fetching `/.well-known/openid-configuration` for itself would cost the provider a request per
consumer per process. The dev authorization server counts the requests it gets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from auth.settings import AuthSettings
from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import API_AUDIENCE, start_server
from tools.ciba.client import CIBAClient


@pytest.fixture
def authz() -> Iterator[DevAuthorizationServer]:
    server = start_server()
    yield server
    server.stop()


def settings_for(server: DevAuthorizationServer, monkeypatch: pytest.MonkeyPatch) -> AuthSettings:
    for name in ("AUTH0_DOMAIN", "CIBA_CLIENT_AUTH_METHOD", "CIBA_LOGIN_HINT_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTH_ISSUER", server.issuer)
    monkeypatch.setenv("AUTH0_CLIENT_ID", server.client_id)
    monkeypatch.setenv("AUTH0_CLIENT_SECRET", server.client_secret)
    monkeypatch.setenv("AUTH0_AUDIENCE", API_AUDIENCE)
    return AuthSettings()


async def test_the_shared_verifier_and_ciba_client_fetch_discovery_once(
    authz: DevAuthorizationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(authz, monkeypatch)
    token = authz.state.login_token("alice")["access_token"]

    claims = await settings.shared_verifier().verify(token)
    metadata = await CIBAClient.shared(settings).discover()

    assert claims["sub"].endswith("alice")
    assert metadata.token_endpoint.startswith(authz.issuer.rstrip("/"))
    assert authz.state.stats()["discovery_requests"] == 1


async def test_a_client_of_its_own_keeps_its_own_discovery(authz: DevAuthorizationServer) -> None:
    """A directly built client (a script, a test) does not read another's cached document."""
    first = CIBAClient(issuer=authz.issuer, client_id=authz.client_id, client_secret=authz.client_secret)
    second = CIBAClient(issuer=authz.issuer, client_id=authz.client_id, client_secret=authz.client_secret)
    try:
        await first.discover()
        await second.discover()
        await first.discover()
    finally:
        await first.aclose()
        await second.aclose()
    assert authz.state.stats()["discovery_requests"] == 2
