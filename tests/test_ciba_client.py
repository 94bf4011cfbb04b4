"""The CIBA client against the real dev authorization server over HTTP: every outcome is typed."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from auth.client_assertion import CLIENT_ASSERTION_TYPE, ClientAssertionSigner, generate_private_key_pem
from auth.verifier import JWTVerifier
from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ALICE,
    CHECKOUT_AUDIENCE,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    decide,
    make_client,
    only_request,
    requests_for,
    sleep_until,
    stats,
)
from tools.ciba_client import (
    AccessDenied,
    Approved,
    BackchannelResponse,
    CIBAClient,
    CIBAError,
    ExpiredToken,
    InvalidBindingMessage,
    InvalidGrant,
    Pending,
    SlowDown,
    validate_binding_message,
)


async def poll_until_decided(ciba: CIBAClient, response: BackchannelResponse, timeout: float = 10.0) -> object:
    """Poll honouring the interval (and any slow_down) until the outcome is not pending."""
    interval = response.interval
    deadline = time.time() + timeout
    next_at = time.time() + interval
    while time.time() < deadline:
        await sleep_until(next_at)
        result = await ciba.poll(response.auth_req_id, interval=interval)
        if isinstance(result, SlowDown):
            interval, next_at = result.interval, time.time() + result.wait
            continue
        if not isinstance(result, Pending):
            return result
        next_at = time.time() + interval
    raise AssertionError("the request stayed pending")


@pytest.mark.parametrize("auth_method", ["client_secret_post", "client_secret_basic"])
async def test_approve_path_gives_a_token_that_verifies_against_the_jwks(
    authz: DevAuthorizationServer,  # noqa: F811
    auth_method: str,
) -> None:
    async with make_client(authz, auth_method) as ciba:
        details = [{"type": "stock_purchase", "ticker": "MSFT", "quantity": 10}]
        response = await ciba.backchannel_authenticate(
            ALICE,
            ["stock:buy"],
            "Buy 10 MSFT",
            audience=CHECKOUT_AUDIENCE,
            requested_expiry=60,
            authorization_details=details,
        )
        assert response.interval == 1 and response.expires_in == 60
        assert response.auth_req_id not in repr(response)

        first = await ciba.poll(response.auth_req_id, interval=response.interval)
        assert first == Pending(interval=1)

        request = await only_request(authz)
        assert request["binding_message"] == "Buy 10 MSFT"
        assert request["scope"] == "openid stock:buy"
        assert request["audience"] == CHECKOUT_AUDIENCE
        assert request["authorization_details"] == details
        assert response.auth_req_id not in json.dumps(request)
        await decide(authz, request["id"], approve=True)

        result = await poll_until_decided(ciba, response)
        assert isinstance(result, Approved)
        tokens = result.tokens
        assert tokens.token_type == "Bearer" and tokens.expires_in and tokens.expires_in > 0
        assert tokens.scope == ["openid", "stock:buy"]
        assert tokens.authorization_details == details
        assert tokens.id_token and tokens.access_token not in repr(tokens)

        verifier = JWTVerifier(issuer=authz.issuer, audience=CHECKOUT_AUDIENCE)
        claims = await verifier.verify(tokens.access_token)
        assert claims["aud"] == CHECKOUT_AUDIENCE and claims["sub"] == ALICE
        assert claims["scope"].split() == ["openid", "stock:buy"]
        assert claims["authorization_details"] == details

        credentials = tokens.to_credentials()
        assert credentials.access_token == tokens.access_token and credentials.expires_at

        # Single use: the same auth_req_id never gives a second token.
        assert isinstance(await ciba.poll(response.auth_req_id), InvalidGrant)

        polls = (await stats(authz))["polls_by_request"][request["id"]]
        assert polls == 3  # pending, approved, the refused reuse


async def test_deny_path(authz: DevAuthorizationServer, client: CIBAClient) -> None:  # noqa: F811
    response = await client.backchannel_authenticate(ALICE, "stock:buy", "Buy 1 AAPL", audience=CHECKOUT_AUDIENCE)
    await decide(authz, (await only_request(authz))["id"], approve=False)
    assert isinstance(await poll_until_decided(client, response), AccessDenied)
    assert isinstance(await client.poll(response.auth_req_id), InvalidGrant)


async def test_expiry_path(authz: DevAuthorizationServer, client: CIBAClient) -> None:  # noqa: F811
    response = await client.backchannel_authenticate(ALICE, "stock:buy", "Buy 2 NVDA", requested_expiry=1)
    assert response.expires_in == 1
    assert isinstance(await poll_until_decided(client, response), ExpiredToken)
    assert await requests_for(authz, "alice") == []
    assert (await requests_for(authz, "alice", status="expired"))[0]["binding_message"] == "Buy 2 NVDA"


async def test_slow_down_adds_five_seconds_and_sends_retry_after(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
) -> None:
    response = await client.backchannel_authenticate(ALICE, "stock:buy", "Buy 3 TSLA")
    assert isinstance(await client.poll(response.auth_req_id, interval=1), Pending)
    too_fast = await client.poll(response.auth_req_id, interval=1)
    assert too_fast == SlowDown(interval=6, retry_after=6.0)
    assert too_fast.wait == 6.0
    # The server raised this request's interval for good: its record says 6 s now.
    assert (await only_request(authz))["interval"] == 6

    # On the wire: HTTP 400, error slow_down, Retry-After with the new interval.
    async with httpx.AsyncClient() as http:
        raw = await http.post(
            authz.issuer + "oauth/token",
            data={
                "grant_type": "urn:openid:params:grant-type:ciba",
                "auth_req_id": response.auth_req_id,
                "client_id": authz.client_id,
                "client_secret": authz.client_secret,
            },
        )
    assert raw.status_code == 400 and raw.json()["error"] == "slow_down"
    assert raw.headers["Retry-After"] == "11" and raw.headers["Cache-Control"] == "no-store"


async def test_unknown_user_is_a_typed_backchannel_error(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
) -> None:
    with pytest.raises(CIBAError) as caught:
        await client.backchannel_authenticate("auth0|mallory", "stock:buy", "Buy 1 MSFT")
    assert caught.value.error == "unknown_user_id" and caught.value.status == 400
    assert (await stats(authz))["backchannel_requests"] == 1


@pytest.mark.parametrize(
    "message",
    ["", "   ", "x" * 65, "Buy 10 MSFT!", "Kaufe 10 Äpfel", "Buy\n10", "<script>"],
)
async def test_bad_binding_message_is_refused_before_any_request(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    message: str,
) -> None:
    with pytest.raises(InvalidBindingMessage) as caught:
        await client.backchannel_authenticate(ALICE, "stock:buy", message)
    assert caught.value.error == "invalid_binding_message" and caught.value.status is None
    assert (await stats(authz))["backchannel_requests"] == 0


def test_binding_message_rule_accepts_auth0_characters() -> None:
    for message in ("Buy 10 MSFT", "a", "x" * 64, "Order #42: 3 AAPL at 1.5, ref A-1_b+c"):
        assert validate_binding_message(message) == message


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


async def test_plain_login_hint(authz: DevAuthorizationServer) -> None:  # noqa: F811
    async with make_client(authz, login_hint_format="plain") as ciba:
        await ciba.backchannel_authenticate("alice", "stock:buy", "Buy 5 AMZN")
        await ciba.backchannel_authenticate(ALICE, "stock:buy", "Buy 6 AMZN")
    assert [r["binding_message"] for r in await requests_for(authz, ALICE)] == ["Buy 5 AMZN", "Buy 6 AMZN"]


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


async def test_server_is_strict_like_auth0(authz: DevAuthorizationServer) -> None:  # noqa: F811
    """Requests a lax client might send are refused with the CIBA Core error codes."""
    hint = json.dumps({"format": "iss_sub", "iss": authz.issuer, "sub": ALICE})
    good = {
        "client_id": authz.client_id,
        "client_secret": authz.client_secret,
        "scope": "openid stock:buy",
        "login_hint": hint,
        "binding_message": "Buy 1 MSFT",
    }
    cases: list[tuple[dict[str, str | None], int, str]] = [
        ({"scope": "stock:buy"}, 400, "invalid_scope"),
        ({"login_hint": None}, 400, "invalid_request"),
        ({"id_token_hint": "x.y.z"}, 400, "invalid_request"),  # two hints
        (
            {"login_hint": json.dumps({"format": "iss_sub", "iss": "https://evil/", "sub": ALICE})},
            400,
            "invalid_request",
        ),
        (
            {"login_hint": json.dumps({"format": "iss_sub", "iss": authz.issuer, "sub": "auth0|x"})},
            400,
            "unknown_user_id",
        ),
        ({"binding_message": None}, 400, "invalid_request"),
        ({"binding_message": "Buy 1 MSFT!"}, 400, "invalid_binding_message"),
        ({"requested_expiry": "0"}, 400, "invalid_request"),
        ({"requested_expiry": "soon"}, 400, "invalid_request"),
        ({"authorization_details": "{not json"}, 400, "invalid_authorization_details"),
        ({"authorization_details": '[{"ticker": "MSFT"}]'}, 400, "invalid_authorization_details"),
        ({"client_secret": "nope"}, 401, "invalid_client"),
        ({"client_secret": None}, 401, "invalid_client"),
    ]
    async with httpx.AsyncClient(base_url=authz.url) as http:
        for change, status, error in cases:
            form = {k: v for k, v in {**good, **change}.items() if v is not None}
            response = await http.post("/bc-authorize", data=form)
            assert (response.status_code, response.json()["error"]) == (status, error), change
        # Repeated parameters and JSON bodies are not OAuth requests.
        repeated = await http.post(
            "/bc-authorize",
            content=httpx.QueryParams({**good}).add("scope", "openid").__str__(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert repeated.json()["error"] == "invalid_request"
        assert (await http.post("/bc-authorize", json=good)).json()["error"] == "invalid_request"
        # Two client authentication methods at once.
        both = await http.post("/bc-authorize", data=good, auth=(authz.client_id, authz.client_secret))
        assert both.json()["error"] == "invalid_request"
        # Token endpoint: unknown grant type, missing auth_req_id.
        creds = {"client_id": authz.client_id, "client_secret": authz.client_secret}
        grant = await http.post("/oauth/token", data={**creds, "grant_type": "password"})
        assert grant.json()["error"] == "unsupported_grant_type"
        missing = await http.post("/oauth/token", data={**creds, "grant_type": "urn:openid:params:grant-type:ciba"})
        assert missing.json()["error"] == "invalid_request"
        unknown = await http.post(
            "/oauth/token",
            data={**creds, "grant_type": "urn:openid:params:grant-type:ciba", "auth_req_id": "nope"},
        )
        assert unknown.json()["error"] == "invalid_grant"
    assert (await stats(authz))["backchannel_requests"] == len(cases) + 3
    assert await requests_for(authz, "alice", status=None) == []


async def test_dev_login_and_approval_page(authz: DevAuthorizationServer, client: CIBAClient) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=authz.url) as http:
        login = (await http.post("/dev/login", json={"username": "bob"})).json()
        assert login["sub"] == "auth0|bob" and login["token_type"] == "Bearer" and login["expires_in"] > 0
        claims = await JWTVerifier(issuer=authz.issuer, audience="https://agents.test/api").verify(
            login["access_token"]
        )
        assert claims["sub"] == "auth0|bob"
        assert (await http.post("/dev/login", json={"username": "mallory"})).status_code == 404
        assert "<form" in (await http.get("/dev/login")).text

        details = [{"type": "buy", "n": 1}]
        await client.backchannel_authenticate(ALICE, "stock:buy", "Buy 10 MSFT", authorization_details=details)
        page = (await http.get("/approvals")).text
        assert "Buy 10 MSFT" in page and "data-request-id" in page and ">Approve<" in page and ">Deny<" in page
        assert "<script>" not in (await only_request(authz))["binding_message"]

        # The no-JavaScript path: a form post, then back to the page.
        request = await only_request(authz)
        answer = await http.post(f"/approvals/{request['id']}/deny")
        assert answer.status_code == 303 and answer.headers["location"].endswith("/approvals")
        assert (await requests_for(authz, "alice", status="denied"))[0]["id"] == request["id"]
        # Deciding twice the same way is a no-op; the other way is a conflict.
        assert (await http.post(f"/dev/ciba/requests/{request['id']}/deny")).status_code == 200
        assert (await http.post(f"/dev/ciba/requests/{request['id']}/approve")).status_code == 409
        assert (await http.post("/dev/ciba/requests/req_missing/approve")).status_code == 404


def test_dev_server_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevAuthorizationServer(api_audience="x", host="0.0.0.0")


async def test_authorization_details_fall_back_to_scope_and_message_without_rar() -> None:
    """A provider that does not advertise RAR gets no `authorization_details` (it might refuse them, or
    ignore them silently): the scope and the binding message still say what the user approves."""
    with DevAuthorizationServer(api_audience="urn:test:api", authorization_details_supported=False) as plain:
        async with make_client(plain) as ciba:
            metadata = await ciba.discover()
            assert not metadata.supports_authorization_details(["stock_purchase"])
            await ciba.backchannel_authenticate(
                user_id=ALICE,
                scope=["stock:buy"],
                binding_message="Buy 1 MSFT",
                audience=CHECKOUT_AUDIENCE,
                authorization_details=[{"type": "stock_purchase", "ticker": "MSFT", "quantity": 1}],
            )
        (request,) = plain.state.list_requests()
        assert request["authorization_details"] is None and request["binding_message"] == "Buy 1 MSFT"


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
