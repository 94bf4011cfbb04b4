"""The authorization server goes down (connection refused) and comes back: transient, never a denial."""

from __future__ import annotations

import time

import pytest

from devservers.authz_server import DevAuthorizationServer, create_authz_app
from devservers.server_thread import ServerThread
from tests.ciba_fixtures import (
    ALICE,
    CHECKOUT_AUDIENCE,
    BuyArgs,
    RecordingTool,
    binding_for,
    decide,
    encryption_key,  # noqa: F401  (fixture)
    make_client,
    only_request,
    sleep_until,
    start_server,
    stats,
    store,  # noqa: F401  (fixture)
    tool_context,
)
from tests.waiting import eventually
from tools.ciba.client import CIBATransientError, Pending
from tools.ciba.confirmation import PENDING_NAMESPACE, with_async_user_confirmation
from tools.ciba.credential_store import SQLiteCredentialStore
from tools.ciba.interrupts import AuthorizationPendingInterrupt, AuthorizationPollingInterrupt


def restart(server: DevAuthorizationServer) -> ServerThread:
    """A new HTTP server on the same port with the same state object (requests, client, signing key)."""
    return ServerThread(create_authz_app(state=server.state), host=server.host, port=server.port).start()


async def test_client_reports_transient_errors_and_resumes() -> None:
    server = start_server()
    ciba = make_client(server)
    try:
        response = await ciba.backchannel_authenticate(ALICE, "stock:buy", "Buy 1 MSFT")
        server.stop()
        started = time.monotonic()
        with pytest.raises(CIBATransientError) as caught:
            await ciba.poll(response.auth_req_id, interval=1)
        assert caught.value.status is None and "ConnectError" in str(caught.value)
        assert time.monotonic() - started >= 0.1  # retried with backoff (0.05 s + 0.1 s) before giving up
        with pytest.raises(CIBATransientError):
            await ciba.backchannel_authenticate(ALICE, "stock:buy", "Buy 2 MSFT")
        revived = restart(server)
        try:
            assert isinstance(await ciba.poll(response.auth_req_id, interval=1), Pending)
        finally:
            revived.stop()
    finally:
        server.stop()
        await ciba.aclose()


async def test_wrapper_survives_an_outage_and_buys_once(store: SQLiteCredentialStore) -> None:  # noqa: F811
    server = start_server()
    ciba = make_client(server)
    raw = RecordingTool()
    tool = with_async_user_confirmation(
        raw.tool(),
        user_id=ALICE,
        scopes=["stock:buy"],
        audience=CHECKOUT_AUDIENCE,
        binding_message=binding_for,
        store=store,
        client=ciba,
        retry_backoff=(0.3, 1.0),
    )
    args = BuyArgs(ticker="MSFT", quantity=3)
    ctx = tool_context("call-outage")
    revived: ServerThread | None = None
    try:
        with pytest.raises(AuthorizationPendingInterrupt) as first:
            await tool.run(args, ctx)
        request = await only_request(server)
        server.stop()  # the authorization server is down from here

        outcomes = []
        for _ in range(3):  # each check while down: transient, backing off, still pending
            await sleep_until(first.value.next_check_at if not outcomes else outcomes[-1].next_check_at)
            with pytest.raises(AuthorizationPollingInterrupt) as down:
                await tool.run(args, ctx)
            outcomes.append(down.value)
        assert [o.reason for o in outcomes] == ["transient_error"] * 3
        assert [o.retry_after for o in outcomes] == [
            1.0,
            1.0,
            1.0,
        ]  # max(interval 1 s, backoff), capped at 1 s
        record = await store.get(PENDING_NAMESPACE, "thread-1:buy:call-outage")
        assert record["failures"] == 3 and record["auth_req_id"]  # the request is kept, not given up
        assert raw.runs == []

        revived = restart(server)
        await decide(server, request["id"], approve=True)

        async def finished() -> str | None:
            try:
                return await tool.run(args, ctx)
            except (AuthorizationPendingInterrupt, AuthorizationPollingInterrupt) as interrupt:
                await sleep_until(interrupt.next_check_at or 0)
                return None

        assert await eventually(finished, timeout=10, what="the purchase after the outage") == "bought 3 MSFT"
        assert len(raw.runs) == 1 and raw.runs[0]["credentials"].access_token
        assert (await stats(server))["backchannel_requests"] == 1
    finally:
        if revived is not None:
            revived.stop()
        server.stop()
        await ciba.aclose()


async def test_outage_during_the_first_request_retries_it_later(store: SQLiteCredentialStore) -> None:  # noqa: F811
    server = start_server()
    port = server.port
    ciba = make_client(server)
    await ciba.discover()  # discovery succeeded earlier; the backchannel endpoint is down now
    server.stop()
    tool = with_async_user_confirmation(
        RecordingTool().tool(),
        user_id=ALICE,
        scopes=["stock:buy"],
        binding_message=binding_for,
        store=store,
        client=ciba,
        retry_backoff=(0.2, 0.2),
    )
    args = BuyArgs(ticker="AAPL", quantity=1)
    ctx = tool_context("call-first-down")
    revived: ServerThread | None = None
    try:
        with pytest.raises(AuthorizationPollingInterrupt) as down:
            await tool.run(args, ctx)
        assert down.value.reason == "transient_error"
        record = await store.get(PENDING_NAMESPACE, "thread-1:buy:call-first-down")
        assert record["state"] == "requesting" and record["failures"] == 1
        revived = restart(server)
        assert revived.port == port
        await sleep_until(down.value.next_check_at or 0)
        with pytest.raises(AuthorizationPendingInterrupt):
            await tool.run(args, ctx)
        assert (await stats(server))["backchannel_requests"] == 1
        assert (await only_request(server))["binding_message"] == "Buy 1 AAPL"
    finally:
        if revived is not None:
            revived.stop()
        await ciba.aclose()
