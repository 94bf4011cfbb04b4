"""The dev authorization server the CIBA tests use as Auth0 and as the user's phone, over real HTTP: it
refuses what Auth0 refuses with the CIBA Core error codes, its dev login and approval page work (also
without JavaScript), and it only listens on loopback."""

from __future__ import annotations

import json

import httpx
import pytest

from auth.verifier import JWTVerifier
from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ALICE,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    only_request,
    requests_for,
    stats,
)
from tools.ciba.client import (
    CIBAClient,
)


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
    cases = _refused_changes(authz)
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


def _refused_changes(server: DevAuthorizationServer) -> list[tuple[dict[str, str | None], int, str]]:
    """Changes to a good backchannel request (None: the parameter left out), each with its refusal."""
    return [
        ({"scope": "stock:buy"}, 400, "invalid_scope"),
        ({"login_hint": None}, 400, "invalid_request"),
        ({"id_token_hint": "x.y.z"}, 400, "invalid_request"),  # two hints
        (
            {"login_hint": json.dumps({"format": "iss_sub", "iss": "https://evil/", "sub": ALICE})},
            400,
            "invalid_request",
        ),
        (
            {"login_hint": json.dumps({"format": "iss_sub", "iss": server.issuer, "sub": "auth0|x"})},
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
