"""How the CIBA client authenticates and finds its endpoints, against real dev authorization servers over
HTTP: a wrong client secret (post and basic) is `invalid_client` and never echoed, another client's auth_req_id
is refused, clients without CIBA and users without push are typed errors, private_key_jwt works end to end
(a wrong or unusable key is refused at once), and discovery is cached and may not send the secret elsewhere."""

from __future__ import annotations

import time

import httpx
import pytest

from auth.client_assertion import CLIENT_ASSERTION_TYPE, ClientAssertionSigner, generate_private_key_pem
from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ALICE,
    CHECKOUT_AUDIENCE,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    sleep_until,
)
from tools.ciba.client import (
    Approved,
    CIBAClient,
    CIBAError,
    InvalidGrant,
    Pending,
)


@pytest.mark.parametrize("auth_method", ["client_secret_post", "client_secret_basic"])
async def test_wrong_client_secret_is_invalid_client_and_never_echoed(
    authz: DevAuthorizationServer,  # noqa: F811
    auth_method: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "wrong-" + authz.client_secret
    bad = CIBAClient(issuer=authz.issuer, client_id=authz.client_id, client_secret=secret, auth_method=auth_method)  # type: ignore[arg-type]
    async with bad:
        with pytest.raises(CIBAError) as caught:
            await bad.backchannel_authenticate(ALICE, "stock:buy", "Buy 1 MSFT")
        with pytest.raises(CIBAError) as polled:
            await bad.poll("whatever")
    assert caught.value.error == "invalid_client" and caught.value.status == 401
    assert polled.value.error == "invalid_client" and polled.value.status == 401
    for text in (str(caught.value), repr(caught.value), repr(bad), caplog.text):
        assert secret not in text and authz.client_secret not in text


async def test_another_clients_auth_req_id_is_invalid_grant() -> None:
    server = DevAuthorizationServer(
        api_audience="https://agents.test/api",
        clients={"one": "secret-one", "two": "secret-two"},
        default_interval=1,
    ).start()
    try:
        one = CIBAClient(issuer=server.issuer, client_id="one", client_secret="secret-one")
        two = CIBAClient(
            issuer=server.issuer,
            client_id="two",
            client_secret="secret-two",
            auth_method="client_secret_basic",
        )
        async with one, two:
            response = await one.backchannel_authenticate(ALICE, "stock:buy", "Buy 1 MSFT")
            assert isinstance(await two.poll(response.auth_req_id), InvalidGrant)
            assert isinstance(await one.poll(response.auth_req_id), Pending)
    finally:
        server.stop()


async def test_unauthorized_client_and_no_push_user() -> None:
    server = DevAuthorizationServer(
        api_audience="https://agents.test/api",
        clients={"ciba": "s1", "web": "s2"},
        ciba_disabled_clients=frozenset({"web"}),
        users=("alice", "carol"),
        users_without_push=frozenset({"carol"}),
    ).start()
    try:
        async with CIBAClient(issuer=server.issuer, client_id="web", client_secret="s2") as web:
            with pytest.raises(CIBAError) as caught:
                await web.backchannel_authenticate(ALICE, "stock:buy", "Buy 1 MSFT")
            assert caught.value.error == "unauthorized_client"
        async with CIBAClient(issuer=server.issuer, client_id="ciba", client_secret="s1") as ciba:
            with pytest.raises(CIBAError) as caught:
                await ciba.backchannel_authenticate("auth0|carol", "stock:buy", "Buy 1 MSFT")
            assert caught.value.error == "invalid_request" and "push" in (caught.value.description or "")
    finally:
        server.stop()


async def test_discovery_is_cached_and_advertises_ciba(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
) -> None:
    metadata = await client.discover()
    assert metadata is await client.discover()
    assert metadata.issuer == authz.issuer
    assert metadata.backchannel_authentication_endpoint == authz.issuer + "bc-authorize"
    assert metadata.token_endpoint == authz.issuer + "oauth/token"
    assert metadata.raw["backchannel_token_delivery_modes_supported"] == ["poll", "ping"]
    assert set(metadata.raw["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
    }
    assert "urn:openid:params:grant-type:ciba" in metadata.raw["grant_types_supported"]


async def test_private_key_jwt_end_to_end_and_a_wrong_key_is_refused_at_once() -> None:
    """The client signs a fresh assertion per request (RFC 7523); the dev server verifies it against the
    registered public key. A key the server does not know is `invalid_client`, found by the start-up check."""
    signer = ClientAssertionSigner("pkj-agent", generate_private_key_pem(), kid="k1")
    with DevAuthorizationServer(
        api_audience="urn:test:api", default_interval=1, client_keys={"pkj-agent": signer.public_key_pem()}
    ) as server:
        async with CIBAClient(
            issuer=server.issuer, client_id="pkj-agent", auth_method="private_key_jwt", assertion_signer=signer
        ) as ciba:
            await ciba.check_client_authentication()  # accepted: the start-up check passes
            started = await ciba.backchannel_authenticate(
                user_id=ALICE, scope=["stock:buy"], binding_message="Buy 1 MSFT", audience=CHECKOUT_AUDIENCE
            )
            (request,) = server.state.list_requests()
            server.state.decide(request["id"], approve=True)
            await sleep_until(time.time() + 1.05)
            result = await ciba.poll(started.auth_req_id, interval=1)
            assert isinstance(result, Approved) and result.tokens.access_token

        stranger = ClientAssertionSigner("pkj-agent", generate_private_key_pem())
        async with CIBAClient(
            issuer=server.issuer, client_id="pkj-agent", auth_method="private_key_jwt", assertion_signer=stranger
        ) as wrong:
            started_at = time.monotonic()
            with pytest.raises(CIBAError) as refused:
                await wrong.check_client_authentication()
            assert refused.value.error == "invalid_client" and time.monotonic() - started_at < 5

        # an assertion is good for one request only: a replay is refused
        assertion = signer.assertion(audience=server.issuer)
        form = {
            "grant_type": "urn:openid:params:grant-type:ciba",
            "auth_req_id": "nope",
            "client_id": "pkj-agent",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        async with httpx.AsyncClient(timeout=5) as http:
            first = await http.post(server.issuer + "oauth/token", data=form)
            again = await http.post(server.issuer + "oauth/token", data=form)
        assert first.json()["error"] == "invalid_grant" and again.json()["error"] == "invalid_client"


def test_an_unusable_private_key_is_a_configuration_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from auth.settings import AuthConfigError, AuthSettings

    monkeypatch.setenv("AUTH_ISSUER", "https://issuer.example/")
    monkeypatch.setenv("AUTH0_CLIENT_ID", "pkj-agent")
    monkeypatch.setenv("CIBA_CLIENT_AUTH_METHOD", "private_key_jwt")
    monkeypatch.setenv("CIBA_CLIENT_ASSERTION_KEY", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----")
    with pytest.raises(AuthConfigError, match="CIBA_CLIENT_ASSERTION_KEY is not a usable private key") as raised:
        CIBAClient.from_settings(AuthSettings())
    assert "not a key" not in str(raised.value)


async def test_discovery_pointing_the_secret_at_another_origin_is_refused() -> None:
    """The client secret (or its assertion) goes to the token and backchannel endpoints: a discovery
    document naming another host for them is a configuration error, and nothing is sent there."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from devservers.server_thread import ServerThread

    sent_elsewhere: list[str] = []

    def discovery_app(issuer: list[str]) -> Starlette:
        async def discovery(_request: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": issuer[0],
                    "token_endpoint": "http://127.0.0.2:9/oauth/token",  # another origin
                    "backchannel_authentication_endpoint": issuer[0] + "bc-authorize",
                }
            )

        async def anything(request: Request) -> JSONResponse:
            sent_elsewhere.append(request.url.path)
            return JSONResponse({}, status_code=400)

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/bc-authorize", anything, methods=["POST"]),
            ]
        )

    issuer: list[str] = []
    server = ServerThread(discovery_app(issuer))
    issuer.append(server.url + "/")
    server.start()
    try:
        async with CIBAClient(issuer=issuer[0], client_id="cid", client_secret="s" * 32) as client:
            with pytest.raises(CIBAError) as caught:
                await client.backchannel_authenticate(ALICE, "stock:buy", "Buy 1 MSFT")
        assert caught.value.error == "invalid_configuration" and "origin" in str(caught.value)
        assert sent_elsewhere == []
    finally:
        server.stop()
