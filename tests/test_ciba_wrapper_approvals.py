"""`with_async_user_confirmation` end to end, the user's answer: pending then approved (the tool runs once,
with its credential), concurrent calls for one tool call sending one request, a denial or an expiry as the
tool result, slow_down persisted and respected, and an approval bound to the approved arguments. Real dev
server, real HTTP, real SQLite file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from auth.verifier import JWTVerifier
from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ALICE,
    ARGS,
    CHECKOUT_AUDIENCE,
    BuyArgs,
    RecordingTool,
    assert_spent,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    decide,
    encryption_key,  # noqa: F401  (fixture)
    make_client,
    only_request,
    requests_for,
    run_until_done,
    sleep_until,
    stats,
    store,  # noqa: F401  (fixture)
    tool_context,
    wrap,
)
from tools.base import ToolContext
from tools.ciba.client import CIBAClient
from tools.ciba.confirmation import (
    CREDENTIALS_NAMESPACE,
    PENDING_NAMESPACE,
    get_ciba_credentials,
)
from tools.ciba.credential_store import SQLiteCredentialStore
from tools.ciba.interrupts import (
    AccessDeniedInterrupt,
    AsyncAuthorizationInterrupt,
    AuthorizationPendingInterrupt,
    AuthorizationPollingInterrupt,
)


async def test_pending_then_approved_runs_once_with_its_credential(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    raw = RecordingTool()
    seen: list[AsyncAuthorizationInterrupt] = []
    tool = wrap(raw.tool(), store, client, on_authorization_interrupt=lambda i, ctx: seen.append(i))
    assert (tool.name, tool.description, tool.parameters) == ("buy", "Buy shares.", BuyArgs)
    ctx = tool_context("call-1")

    with pytest.raises(AuthorizationPendingInterrupt) as first:
        await tool.run(ARGS, ctx)
    pending = first.value
    assert pending.tool_call_id == "call-1" and pending.thread_id == "thread-1" and pending.tool_name == "buy"
    assert pending.binding_message == "Buy 10 MSFT" and pending.scopes == ["stock:buy"]
    assert pending.interval == 1 and pending.expires_at and pending.next_check_at
    assert pending.expires_at - time.time() > 200  # requested_expiry 300
    assert seen == [pending]
    assert (await stats(authz))["backchannel_requests"] == 1
    record = await store.get(PENDING_NAMESPACE, "thread-1:buy:call-1")
    assert record["auth_req_id"] and record["auth_req_id"] not in pending.to_json()

    # Again while pending and before the interval: no poll, no second request.
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    counters = await stats(authz)
    assert counters["backchannel_requests"] == 1 and counters["token_requests"] == 0

    request = await only_request(authz)
    assert request["binding_message"] == "Buy 10 MSFT" and request["sub"] == ALICE
    await decide(authz, request["id"], approve=True)
    assert await run_until_done(tool, ctx) == "bought 10 MSFT"

    (run,) = raw.runs
    credentials = run["credentials"]
    assert credentials is not None and credentials.scope == ["openid", "stock:buy"]
    claims = await JWTVerifier(issuer=authz.issuer, audience=CHECKOUT_AUDIENCE).verify(credentials.access_token)
    assert claims["sub"] == ALICE and "stock:buy" in claims["scope"].split()
    assert get_ciba_credentials() is None  # visible only inside the tool call
    assert_spent(await store.get(CREDENTIALS_NAMESPACE, "thread-1:buy:call-1"), result="bought 10 MSFT")
    assert await store.get(PENDING_NAMESPACE, "thread-1:buy:call-1") is None
    counters = await stats(authz)
    assert counters["backchannel_requests"] == 1
    assert counters["polls_by_request"][request["id"]] == counters["token_requests"] <= 3

    # Single use: calling the same tool call again (a crash before the agent recorded the result) does
    # not run the tool again, and does not ask the user again: it gets the outcome back.
    assert await tool.run(ARGS, ctx) == "bought 10 MSFT"
    assert len(raw.runs) == 1
    assert (await stats(authz))["backchannel_requests"] == 1


async def test_concurrent_calls_for_one_tool_call_send_one_request(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    tmp_path: Path,
    encryption_key: str,  # noqa: F811
) -> None:
    tool = wrap(RecordingTool().tool(), store, client)
    ctx = tool_context("call-gather")
    results = await asyncio.gather(*(tool.run(ARGS, ctx) for _ in range(8)), return_exceptions=True)
    assert all(isinstance(r, AuthorizationPendingInterrupt) for r in results), results
    assert (await stats(authz))["backchannel_requests"] == 1

    # Two wrappers that share nothing but the SQLite file (as two processes would): still one request.
    other_store = SQLiteCredentialStore(store.path, encryption_key)
    try:
        wrappers = [wrap(RecordingTool().tool(), s, make_client(authz)) for s in (store, other_store) * 3]
        ctx2 = tool_context("call-two-processes")
        results = await asyncio.gather(*(w.run(ARGS, ctx2) for w in wrappers), return_exceptions=True)
        assert all(isinstance(r, AuthorizationPendingInterrupt) for r in results), results
    finally:
        await other_store.close()
    assert (await stats(authz))["backchannel_requests"] == 2
    assert len(await requests_for(authz)) == 2


@pytest.mark.parametrize("custom", [False, True])
async def test_denial_becomes_the_tool_result(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    custom: bool,
) -> None:
    raw = RecordingTool()
    decided: list[tuple[AsyncAuthorizationInterrupt, ToolContext]] = []

    async def on_unauthorized(interrupt: AsyncAuthorizationInterrupt, ctx: ToolContext) -> dict[str, Any]:
        decided.append((interrupt, ctx))
        return {"status": "denied", "code": interrupt.code}

    tool = wrap(raw.tool(), store, client, **({"on_unauthorized": on_unauthorized} if custom else {}))
    ctx = tool_context("call-deny")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    await decide(authz, (await only_request(authz))["id"], approve=False)
    result = await run_until_done(tool, ctx)
    if custom:
        assert result == {"status": "denied", "code": "ASYNC_AUTHORIZATION_ACCESS_DENIED"}
        ((interrupt, seen_ctx),) = decided
        assert isinstance(interrupt, AccessDeniedInterrupt) and seen_ctx is ctx
    else:
        assert result == "The user has denied the request"
    assert raw.runs == []
    assert await store.get(PENDING_NAMESPACE, "thread-1:buy:call-deny") is None


async def test_expiry_becomes_an_expired_result(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    raw = RecordingTool()
    tool = wrap(raw.tool(), store, client, requested_expiry=2)
    result = await run_until_done(tool, tool_context("call-expire"))
    assert "expired" in result.lower()
    assert raw.runs == [] and await requests_for(authz) == []


async def test_slow_down_is_persisted_and_respected(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    tool = wrap(RecordingTool().tool(), store, client)
    ctx = tool_context("call-slow")
    key = "thread-1:buy:call-slow"
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    # Make the next check poll too early, as a confused resumer (or a clock jump) would.
    record = await store.get(PENDING_NAMESPACE, key)
    await sleep_until(record["next_poll_at"])
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)  # the first poll: pending
    record = await store.get(PENDING_NAMESPACE, key)
    await store.put(PENDING_NAMESPACE, key, {**record, "next_poll_at": 0})
    before = time.time()
    with pytest.raises(AuthorizationPollingInterrupt) as slow:
        await tool.run(ARGS, ctx)
    assert slow.value.reason == "slow_down" and slow.value.interval == 6 and slow.value.retry_after == 6
    assert slow.value.next_check_at >= before + 6
    record = await store.get(PENDING_NAMESPACE, key)
    assert record["interval"] == 6 and record["next_poll_at"] >= before + 6

    # Until then, no poll reaches the server; later polls keep the 6 s interval.
    polls = (await stats(authz))["token_requests"]
    with pytest.raises(AuthorizationPendingInterrupt) as waiting:
        await tool.run(ARGS, ctx)
    assert waiting.value.interval == 6 and waiting.value.next_check_at == record["next_poll_at"]
    assert (await stats(authz))["token_requests"] == polls


async def test_an_approval_is_bound_to_the_approved_arguments(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    raw = RecordingTool()
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context("call-swap")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    await decide(authz, (await only_request(authz))["id"], approve=True)
    swapped = BuyArgs(ticker="MSFT", quantity=1000)  # same tool call id, other arguments than approved
    result = await run_until_done(tool, ctx, swapped)
    assert "other arguments" in result
    assert raw.runs == []
    assert await store.get(CREDENTIALS_NAMESPACE, "thread-1:buy:call-swap") is None


async def test_in_ping_mode_the_checks_on_a_timer_are_a_few_per_request_not_one_every_few_seconds(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """The ping says when the user decided; the timer only catches a lost ping. With no fixed fallback, it
    checks three times over the request's lifetime (every 100 s for 300 s), so a waiting thread can sleep;
    a fixed `ping_fallback` still wins."""
    from tools.ciba.ping import ping_key

    key = ping_key("a key for this test, long enough to be one")
    for fallback, gap in ((None, 300 / 3), (8.0, 8.0)):
        tool = wrap(RecordingTool().tool(), store, client, delivery_mode="ping", ping_key=key, ping_fallback=fallback)
        with pytest.raises(AuthorizationPendingInterrupt) as first:
            await tool.run(ARGS, tool_context(f"call-ping-{fallback}"))
        assert first.value.next_check_at is not None
        assert abs(first.value.next_check_at - (time.time() + gap)) < 5.0, (fallback, first.value.to_dict())
