"""The embedded dev servers answer this machine only: no DNS rebinding (a foreign `Host`), no cross-site
writes (CSRF on approve/deny or sign-in); scripts, the agents and the approval page itself still work."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devservers.authz_server import DevAuthorizationServer


@pytest.fixture
def dev_authz() -> Iterator[DevAuthorizationServer]:
    server = DevAuthorizationServer(api_audience="https://agents.test/api").start()
    try:
        yield server
    finally:
        server.stop()


async def pending_request(server: DevAuthorizationServer) -> str:
    """A pending CIBA request for alice, made the way an agent makes one."""
    from tools.ciba.client import CIBAClient

    async with CIBAClient(
        issuer=server.issuer, client_id=server.client_id, client_secret=server.client_secret
    ) as client:
        await client.backchannel_authenticate("auth0|alice", "stock:buy", "Buy 1 MSFT")
    async with httpx.AsyncClient(base_url=server.url) as http:
        (row,) = (await http.get("/dev/ciba/requests", params={"user": "auth0|alice"})).json()
    return str(row["id"])


async def test_a_foreign_host_is_refused(dev_authz: DevAuthorizationServer) -> None:
    async with httpx.AsyncClient(base_url=dev_authz.url) as http:
        rebound = await http.get("/.well-known/openid-configuration", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 421 and rebound.json()["error"] == "misdirected_request"
        assert (await http.get("/.well-known/openid-configuration")).status_code == 200
        named = await http.get("/.well-known/openid-configuration", headers={"Host": f"localhost:{dev_authz.port}"})
        assert named.status_code == 200


async def test_a_cross_site_approval_or_sign_in_is_refused_a_same_origin_one_works(
    dev_authz: DevAuthorizationServer,
) -> None:
    request_id = await pending_request(dev_authz)
    async with httpx.AsyncClient(base_url=dev_authz.url) as http:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
            refused = await http.post(f"/dev/ciba/requests/{request_id}/approve", headers=headers)
            assert refused.status_code == 403 and refused.json()["error"] == "cross_origin", headers
            login = await http.post("/dev/login", json={"username": "alice"}, headers=headers)
            assert login.status_code == 403
        rows = (await http.get("/dev/ciba/requests", params={"user": "auth0|alice", "status": "pending"})).json()
        assert [r["id"] for r in rows] == [request_id]  # still pending: nothing was approved
        same_origin = {"Origin": dev_authz.url, "Sec-Fetch-Site": "same-origin"}
        approved = await http.post(f"/dev/ciba/requests/{request_id}/approve", headers=same_origin)
        assert approved.status_code == 200 and approved.json()["status"] == "approved"
