"""Re-deploying the Serve application with a new config while a purchase waits for approval loses
nothing: the approval given after the redeploy completes it exactly once (one CIBA request, one order).

The agents live in their own hosts, beside Serve, and everything they wait for is in their files: a new
version of the ingress (new replicas, new settings) finds them where they were.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentrt.stack import wait_for_http
from tests.http_fixtures import APP_NAME, HttpApi, ensure_http_api
from tests.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


async def test_a_redeploy_during_a_pending_purchase_loses_nothing(http_api: HttpApi) -> None:
    from ray import serve

    from agentrt.ingress import build_app

    world = http_api.world
    bob = http_api.headers("bob")
    thread_id = "redeploy-" + http_api.session[-8:]
    requests_before, orders_before = world.stats()["backchannel_requests"], world.orders()
    async with http_api.client() as http:
        sent = await http.post(f"/threads/{thread_id}/messages", json={"content": "buy 7 shares of AAPL"}, headers=bob)
        assert sent.status_code == 200, sent.text
        (request,) = await eventually(
            lambda: [r for r in world.requests_for("bob") if r["binding_message"] == "Buy 7 AAPL"] or None,
            timeout=20,
            what="the purchase's CIBA request",
        )
        replica_before = (await http.get("/healthz")).json()["replica"]
        # a new version of the application: other settings, new replicas
        serve.run(build_app({**http_api.env, "AGENTRT_SSE_PING_SECONDS": "3"}), name=APP_NAME, route_prefix="/")
        wait_for_http(http_api.url + "/healthz", timeout=120)
        assert (await http.get("/healthz")).json()["replica"] != replica_before, "the replicas must be new"
        world.decide(request["id"], approve=True)

        async def final() -> list[dict[str, Any]] | None:
            messages = (await http.get(f"/threads/{thread_id}/messages", headers=bob)).json()["messages"]
            done = any(
                m["role"] == "assistant" and "Purchased 7 shares of AAPL" in (m["content"] or "") for m in messages
            )
            return messages if done else None

        messages = await eventually(final, timeout=60, what="the purchase to complete after the redeploy")
    assert world.orders() == orders_before + 1
    assert world.stats()["backchannel_requests"] == requests_before + 1
    assert [m["content"] for m in messages if m["role"] == "user"] == ["buy 7 shares of AAPL"]
    assert not [r for r in world.requests_for("bob") if r["binding_message"] == "Buy 7 AAPL"]
