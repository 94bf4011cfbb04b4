"""The demo checkout API against real HTTP: token checks, idempotency, validation, persistence."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import httpx
import pytest

from demo.order_details import purchase_details
from demo.prices import DEMO_PRICES
from devservers.checkout_api import CheckoutError, CheckoutServer, TokenVerifier
from tests.jwks_helpers import CHECKOUT_AUDIENCE as AUDIENCE
from tests.jwks_helpers import JWKSServer, RSAKey


@pytest.fixture
def client(checkout):
    # Not an async fixture, and no kept-alive connections: nothing outlives the test's event loop.
    return httpx.AsyncClient(base_url=checkout.api_url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def _key() -> str:
    return "test-" + uuid.uuid4().hex


async def _count(client: httpx.AsyncClient) -> int:
    response = await client.get("/stats")
    assert response.status_code == 200
    return response.json()["orders"]


async def _buy(client, token: str | None, body, key: str | None = None) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/orders", json=body, headers=headers)


def _assert_error(response: httpx.Response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    if error is not None:
        assert body["error"] == error
    return body


async def test_valid_token_places_one_order(issuer, client):
    before = await _count(client)
    token = issuer.token(audience=AUDIENCE)
    response = await _buy(client, token, {"ticker": "MSFT", "quantity": 100}, _key())
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["ticker"] == "MSFT"
    assert order["quantity"] == 100
    assert order["price"] == DEMO_PRICES["MSFT"] == 25.0
    assert order["total"] == 2500.0
    assert order["status"] == "filled"
    assert order["subject"] == "auth0|alice"
    assert order["id"].startswith("ord_")
    assert "idempotent-replayed" not in response.headers
    assert await _count(client) == before + 1
    mine = {"Authorization": f"Bearer {token}"}
    listed = (await client.get("/orders", headers=mine)).json()["orders"]
    assert order["id"] in [o["id"] for o in listed]
    assert (await client.get(f"/orders/{order['id']}", headers=mine)).json() == order


async def test_audience_list_and_lowercase_ticker_accepted(issuer, client):
    token = issuer.token(audience=[AUDIENCE, "https://other/userinfo"])
    response = await _buy(client, token, {"ticker": "aapl", "quantity": 2}, _key())
    assert response.status_code == 201, response.text
    assert response.json()["ticker"] == "AAPL"


async def test_idempotent_replay_returns_same_order(issuer, client):
    token = issuer.token(audience=AUDIENCE)
    key = _key()
    body = {"ticker": "NVDA", "quantity": 3}
    first = await _buy(client, token, body, key)
    assert first.status_code == 201
    after_first = await _count(client)

    # Even with a fresh token for the same user, the same key yields the same order.
    replay = await _buy(client, issuer.token(audience=AUDIENCE), body, key)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert await _count(client) == after_first

    conflict = await _buy(client, token, {"ticker": "NVDA", "quantity": 4}, key)
    _assert_error(conflict, 409, "idempotency_key_reused")
    other_user = await _buy(client, issuer.token(audience=AUDIENCE, subject="auth0|mallory"), body, key)
    _assert_error(other_user, 409, "idempotency_key_reused")
    assert await _count(client) == after_first


async def test_concurrent_requests_with_one_key_make_one_order(issuer, client):
    token = issuer.token(audience=AUDIENCE)
    key = _key()
    before = await _count(client)
    responses = await asyncio.gather(*(_buy(client, token, {"ticker": "TSLA", "quantity": 1}, key) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await _count(client) == before + 1


def _forged_none_token(issuer) -> str:
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(issuer.claims(audience=AUDIENCE))}."


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("missing", 401, "missing_token"),
        ("not_bearer", 401, "invalid_request"),
        ("garbage", 401, "invalid_token"),
        ("wrong_audience", 401, "invalid_token"),
        ("wrong_issuer", 401, "invalid_token"),
        ("expired", 401, "invalid_token"),
        ("bad_signature", 401, "invalid_token"),
        ("unknown_kid", 401, "invalid_token"),
        ("alg_none", 401, "invalid_token"),
        ("hs256", 401, "invalid_token"),
        ("no_scope", 403, "insufficient_scope"),
        ("other_scope", 403, "insufficient_scope"),
    ],
)
async def test_bad_tokens_are_refused_without_an_order(issuer, checkout, client, case, status, error):
    other_key = RSAKey()
    tokens = {
        "missing": None,
        "garbage": "not-a-jwt",
        "wrong_audience": issuer.token(audience="https://api.example.com/other"),
        "wrong_issuer": issuer.token(audience=AUDIENCE, issuer="https://evil.example.com/"),
        "expired": issuer.token(audience=AUDIENCE, expires_in=-120),
        "bad_signature": issuer.token(audience=AUDIENCE, signer=other_key),
        "unknown_kid": issuer.token(audience=AUDIENCE, signer=other_key, kid=other_key.kid),
        "alg_none": _forged_none_token(issuer),
        "hs256": None,
        "no_scope": issuer.token(audience=AUDIENCE, scope=None),
        "other_scope": issuer.token(audience=AUDIENCE, scope="openid profile stock:read"),
    }
    before = await _count(client)
    headers = {"Idempotency-Key": _key()}
    if case == "not_bearer":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
    elif case == "hs256":
        # Symmetric algorithms are never accepted (no HS*/RS* confusion), whatever the secret.
        import jwt

        headers["Authorization"] = "Bearer " + jwt.encode(
            issuer.claims(audience=AUDIENCE), "a-shared-secret-of-sufficient-length!!", algorithm="HS256"
        )
    elif tokens[case] is not None:
        headers["Authorization"] = f"Bearer {tokens[case]}"
    response = await client.post("/orders", json={"ticker": "MSFT", "quantity": 1}, headers=headers)
    body = _assert_error(response, status, error)
    assert "www-authenticate" in response.headers
    token = tokens.get(case)
    if token:
        assert token not in json.dumps(body)
    assert await _count(client) == before


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"ticker": "ZZZZ", "quantity": 1}, "unknown_ticker"),
        ({"ticker": "NOT A TICKER", "quantity": 1}, "invalid_ticker"),
        ({"quantity": 1}, "invalid_ticker"),
        ({"ticker": "MSFT"}, "invalid_quantity"),
        ({"ticker": "MSFT", "quantity": 0}, "invalid_quantity"),
        ({"ticker": "MSFT", "quantity": -5}, "invalid_quantity"),
        ({"ticker": "MSFT", "quantity": 2.5}, "invalid_quantity"),
        ({"ticker": "MSFT", "quantity": "5"}, "invalid_quantity"),
        ({"ticker": "MSFT", "quantity": True}, "invalid_quantity"),
        ({"ticker": "MSFT", "quantity": 1, "price": -1}, "invalid_price"),
        ({"ticker": "MSFT", "quantity": 1, "price": 20.0}, "limit_price_below_market"),
        (["MSFT", 1], "invalid_request"),
    ],
)
async def test_bad_bodies_are_422(issuer, client, body, error):
    before = await _count(client)
    response = await _buy(client, issuer.token(audience=AUDIENCE), body, _key())
    _assert_error(response, 422, error)
    assert await _count(client) == before


async def test_bad_json_and_missing_idempotency_key_are_400(issuer, client):
    token = issuer.token(audience=AUDIENCE)
    before = await _count(client)
    response = await _buy(client, token, {"ticker": "MSFT", "quantity": 1}, key=None)
    _assert_error(response, 400, "idempotency_key_required")
    response = await client.post(
        "/orders",
        content=b"{not json",
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": _key()},
    )
    _assert_error(response, 400, "invalid_json")
    assert await _count(client) == before


async def test_limit_price_at_or_above_market_fills_at_market(issuer, client):
    response = await _buy(
        client, issuer.token(audience=AUDIENCE), {"ticker": "MSFT", "quantity": 10, "price": 30}, _key()
    )
    assert response.status_code == 201
    order = response.json()
    assert order["price"] == 25.0
    assert order["limit_price"] == 30.0


async def test_prices_and_not_found(issuer, client):
    response = await client.get("/prices/msft")
    assert response.json() == {"ticker": "MSFT", "price": 25.0, "currency": "USD"}
    assert (await client.get("/prices")).json()["prices"]["AAPL"] == DEMO_PRICES["AAPL"]
    _assert_error(await client.get("/prices/ZZZZ"), 404, "unknown_ticker")
    _assert_error(await client.get("/nowhere"), 404, "not_found")
    mine = {"Authorization": f"Bearer {issuer.token(audience=AUDIENCE)}"}
    _assert_error(await client.get("/orders/ord_missing", headers=mine), 404, "not_found")


async def test_jwks_is_cached(issuer, client):
    await _buy(client, issuer.token(audience=AUDIENCE), {"ticker": "IBM", "quantity": 1}, _key())
    fetched = issuer.hits.get("jwks", 0)
    for _ in range(3):
        response = await _buy(client, issuer.token(audience=AUDIENCE), {"ticker": "IBM", "quantity": 1}, _key())
        assert response.status_code == 201
    assert issuer.hits.get("jwks", 0) == fetched


async def test_orders_survive_restart(issuer, tmp_path):
    db = tmp_path / "orders.db"
    token = issuer.token(audience=AUDIENCE)
    key = _key()
    body = {"ticker": "AMZN", "quantity": 7}
    with CheckoutServer(issuer=issuer.issuer, audience=AUDIENCE, db_path=db) as first:
        async with httpx.AsyncClient(base_url=first.api_url) as c:
            created = await _buy(c, token, body, key)
            assert created.status_code == 201
            assert await _count(c) == 1
    # A new server process on the same file (default JWKS URL derived from the issuer this time).
    with CheckoutServer(issuer=issuer.issuer, audience=AUDIENCE, db_path=db) as second:
        async with httpx.AsyncClient(base_url=second.api_url) as c:
            assert await _count(c) == 1
            replay = await _buy(c, token, body, key)
            assert replay.status_code == 200
            assert replay.headers["idempotent-replayed"] == "true"
            assert replay.json()["id"] == created.json()["id"]
            assert await _count(c) == 1


async def test_in_memory_default_store(issuer):
    with CheckoutServer(issuer=issuer.issuer, audience=AUDIENCE) as server:
        async with httpx.AsyncClient(base_url=server.api_url) as c:
            assert await _count(c) == 0
            response = await _buy(c, issuer.token(audience=AUDIENCE), {"ticker": "META", "quantity": 1}, _key())
            assert response.status_code == 201
            assert await _count(c) == 1


async def test_verifier_refetches_jwks_for_a_new_kid_but_rate_limits():
    with JWKSServer() as rotating:
        verifier = TokenVerifier(issuer=rotating.issuer, audience=AUDIENCE)
        verifier.jwks.min_refresh_interval = 0
        claims = await verifier.verify("Bearer " + rotating.token(audience=AUDIENCE))
        assert claims["sub"] == "auth0|alice"
        assert rotating.hits["jwks"] == 1

        new_key = RSAKey()
        rotating.keys.append(new_key)
        await verifier.verify("Bearer " + rotating.token(audience=AUDIENCE, signer=new_key, kid=new_key.kid))
        assert rotating.hits["jwks"] == 2

        verifier.jwks.min_refresh_interval = 3600
        stranger = RSAKey()
        for _ in range(3):
            with pytest.raises(CheckoutError) as raised:
                await verifier.verify("Bearer " + rotating.token(audience=AUDIENCE, signer=stranger, kid=stranger.kid))
            assert raised.value.status == 401
        assert rotating.hits["jwks"] == 2


async def test_a_token_approved_for_one_order_buys_that_order_only(issuer, client):
    """RAR: the token's `authorization_details` name the order the user approved; anything else is 403."""
    approved = purchase_details("MSFT", 10)
    token = issuer.token(audience=AUDIENCE, authorization_details=approved)
    before = await _count(client)
    for other in (
        {"ticker": "TSLA", "quantity": 1000},
        {"ticker": "MSFT", "quantity": 11},
        {"ticker": "MSFT", "quantity": 10, "price": 30.0},
    ):
        _assert_error(await _buy(client, token, other, _key()), 403, "authorization_details_mismatch")
    assert await _count(client) == before
    assert (await _buy(client, token, {"ticker": "msft", "quantity": 10}, _key())).status_code == 201

    limited = issuer.token(audience=AUDIENCE, authorization_details=purchase_details("AAPL", 2, 30.0))
    assert (await _buy(client, limited, {"ticker": "AAPL", "quantity": 2, "price": 30.0}, _key())).status_code == 201
    _assert_error(await _buy(client, limited, {"ticker": "AAPL", "quantity": 2}, _key()), 403)
    # a provider without RAR: a token without details is judged by its scope alone
    plain = issuer.token(audience=AUDIENCE)
    assert (await _buy(client, plain, {"ticker": "NVDA", "quantity": 1}, _key())).status_code == 201


async def test_orders_are_read_only_by_their_owner(issuer, client):
    """The order list once showed every user's orders to anyone: now a token for this API is needed, and
    it shows (and opens) only its subject's orders."""
    token = issuer.token(audience=AUDIENCE)
    order = (await _buy(client, token, {"ticker": "MSFT", "quantity": 1}, _key())).json()
    _assert_error(await client.get("/orders"), 401, "missing_token")
    _assert_error(await client.get(f"/orders/{order['id']}"), 401, "missing_token")
    bob = {"Authorization": f"Bearer {issuer.token(audience=AUDIENCE, subject='auth0|bob', scope='openid')}"}
    assert order["id"] not in [o["id"] for o in (await client.get("/orders", headers=bob)).json()["orders"]]
    _assert_error(await client.get(f"/orders/{order['id']}", headers=bob), 404, "not_found")
    other_api = {"Authorization": f"Bearer {issuer.token(audience='https://other/api')}"}
    _assert_error(await client.get("/orders", headers=other_api), 401, "invalid_token")


async def test_an_order_whose_answer_was_lost_is_found_by_its_key_by_its_owner_only(issuer, checkout, client):
    """Review hole 2: the checkout records the order and the answer is lost (a gateway's 504); the client
    finds it by its Idempotency-Key, and nobody else can."""
    token, key = issuer.token(audience=AUDIENCE), _key()
    mine = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/orders", params={"idempotency_key": key}, headers=mine)).json() == {"orders": []}
    checkout.lose_next_answers(1, 504)
    lost = await _buy(client, token, {"ticker": "MSFT", "quantity": 3}, key)
    assert lost.status_code == 504
    (found,) = (await client.get("/orders", params={"idempotency_key": key}, headers=mine)).json()["orders"]
    assert found["quantity"] == 3 and found["ticker"] == "MSFT"
    other = {"Authorization": f"Bearer {issuer.token(audience=AUDIENCE, subject='auth0|bob')}"}
    assert (await client.get("/orders", params={"idempotency_key": key}, headers=other)).json() == {"orders": []}
