"""The CIBA client against the real dev authorization server over HTTP: every outcome of a backchannel
request is typed (approved with a token that verifies, denied, expired, slow_down, an unknown user, a binding
message refused before any request), and `authorization_details` only go to a server that supports them."""

from __future__ import annotations

import json
import time

import httpx
import pytest

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
from tools.ciba.client import (
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


async def test_plain_login_hint(authz: DevAuthorizationServer) -> None:  # noqa: F811
    async with make_client(authz, login_hint_format="plain") as ciba:
        await ciba.backchannel_authenticate("alice", "stock:buy", "Buy 5 AMZN")
        await ciba.backchannel_authenticate(ALICE, "stock:buy", "Buy 6 AMZN")
    assert [r["binding_message"] for r in await requests_for(authz, ALICE)] == ["Buy 5 AMZN", "Buy 6 AMZN"]


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
