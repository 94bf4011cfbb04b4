"""`with_async_user_confirmation` end to end: real dev server, real HTTP, real SQLite file."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from auth.verifier import JWTVerifier
from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ALICE,
    CHECKOUT_AUDIENCE,
    BuyArgs,
    RecordingTool,
    authz,  # noqa: F401  (fixture)
    binding_for,
    client,  # noqa: F401  (fixture)
    decide,
    encryption_key,  # noqa: F401  (fixture)
    make_client,
    only_request,
    requests_for,
    sleep_until,
    stats,
    store,  # noqa: F401  (fixture)
    tool_context,
)
from tools.async_confirmation import (
    CREDENTIALS_NAMESPACE,
    PENDING_NAMESPACE,
    get_ciba_credentials,
    with_async_user_confirmation,
)
from tools.base import Tool, ToolContext, ToolError, TransientToolError
from tools.ciba_client import CIBAClient
from tools.credential_store import SQLiteCredentialStore
from tools.interrupts import (
    AccessDeniedInterrupt,
    AsyncAuthorizationInterrupt,
    AuthorizationPendingInterrupt,
    AuthorizationPollingInterrupt,
    AuthorizationRequestExpiredInterrupt,
)

ARGS = BuyArgs(ticker="MSFT", quantity=10)


def owner(**_: Any) -> str:
    """What the chat agent passes as `user_id`: the thread's owner, never a tool argument."""
    from tools.base import current_tool_context

    owner = current_tool_context().owner
    assert owner
    return owner


def wrap(raw: Tool, store: SQLiteCredentialStore, client: CIBAClient, **options: Any) -> Tool:  # noqa: F811
    options.setdefault("user_id", owner)
    options.setdefault("binding_message", binding_for)
    options.setdefault("retry_backoff", (0.2, 1.0))
    return with_async_user_confirmation(
        raw, scopes=["stock:buy"], audience=CHECKOUT_AUDIENCE, store=store, client=client, **options
    )


async def run_until_done(tool: Tool, ctx: ToolContext, args: Any = ARGS, timeout: float = 15.0) -> Any:
    """What the resumer does: call again at each interrupt's `next_check_at` until there is a result."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return await tool.run(args, ctx)
        except (AuthorizationPendingInterrupt, AuthorizationPollingInterrupt) as interrupt:
            assert interrupt.next_check_at is not None
            await sleep_until(min(interrupt.next_check_at, deadline))
    raise AssertionError("the tool call never finished")


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


def assert_spent(stored: Any, *, result: Any = None, error: str | None = None) -> None:
    """The credential row now holds the call's outcome, and no token any more."""
    assert stored is not None and stored.get("done") is True and "credentials" not in stored, stored
    assert stored["result"] == result and stored["error"] == error


async def test_a_transient_tool_failure_keeps_the_credential_for_a_retry(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    raw = RecordingTool()
    raw.fail_next = True
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context("call-retry")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    await decide(authz, (await only_request(authz))["id"], approve=True)
    with pytest.raises(TransientToolError, match="checkout unavailable"):
        await run_until_done(tool, ctx)
    assert "credentials" in await store.get(CREDENTIALS_NAMESPACE, "thread-1:buy:call-retry")
    assert await tool.run(ARGS, ctx) == "bought 10 MSFT"  # the retry needs no new approval
    first, second = raw.runs
    assert first["credentials"].access_token == second["credentials"].access_token
    assert (await stats(authz))["backchannel_requests"] == 1
    assert_spent(await store.get(CREDENTIALS_NAMESPACE, "thread-1:buy:call-retry"), result="bought 10 MSFT")
    # a re-run after a crash before the agent recorded the result: the outcome, no run, no new request
    assert await tool.run(ARGS, ctx) == "bought 10 MSFT"
    assert len(raw.runs) == 2 and (await stats(authz))["backchannel_requests"] == 1


async def test_a_permanent_tool_failure_spends_the_credential(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    raw = RecordingTool()
    raw.fail_next = ToolError("the order was rejected")
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context("call-rejected")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    await decide(authz, (await only_request(authz))["id"], approve=True)
    with pytest.raises(ToolError, match="rejected"):
        await run_until_done(tool, ctx)
    assert_spent(await store.get(CREDENTIALS_NAMESPACE, "thread-1:buy:call-rejected"), error="the order was rejected")
    with pytest.raises(ToolError, match="rejected"):  # replayed, never run again, nobody asked again
        await tool.run(ARGS, ctx)
    assert len(raw.runs) == 1 and (await stats(authz))["backchannel_requests"] == 1


async def test_refusals_are_typed_results_without_pushing(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    raw = RecordingTool()
    # A binding message Auth0 would refuse: refused here, nothing sent, nothing stored.
    bad = wrap(raw.tool(), store, client, binding_message=lambda ticker, quantity: f"Buy {quantity} {ticker}!")
    result = await bad.run(ARGS, tool_context("call-bad-binding"))
    assert "invalid_binding_message" in result
    assert (await stats(authz))["backchannel_requests"] == 0

    # Unknown user: a refusal, not "no push notifications".
    stranger = wrap(raw.tool(), store, client, user_id=None)
    result = await stranger.run(ARGS, tool_context("call-stranger", owner="auth0|mallory"))
    assert "unknown_user_id" in result and "push" not in result

    # A user without an enrolled device: the server says so, and only then is it "no push".
    codes: list[str] = []
    carol = wrap(raw.tool(), store, client, user_id="auth0|carol", on_unauthorized=lambda i, _: codes.append(i.code))
    await carol.run(ARGS, tool_context("call-carol"))
    assert codes == ["ASYNC_AUTHORIZATION_USER_DOES_NOT_HAVE_PUSH_NOTIFICATIONS"]

    # No owner at all: a tool error for the model, and no request.
    ownerless = wrap(raw.tool(), store, client, user_id=None)
    with pytest.raises(ToolError, match="no owner"):
        await ownerless.run(ARGS, tool_context("call-ownerless", owner=None))

    assert (await stats(authz))["backchannel_requests"] == 2
    assert raw.runs == []
    for call in ("call-bad-binding", "call-stranger", "call-carol", "call-ownerless"):
        assert await store.get(PENDING_NAMESPACE, f"thread-1:buy:{call}") is None


async def test_half_sent_request_is_resent_once_after_its_lease(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process that died between creating the record and storing the auth_req_id (simulated by writing
    the record it would have left: killing a process at that exact line is what the chat tests do)."""
    key = "thread-1:buy:call-crashed"
    now = time.time()
    await store.put(
        PENDING_NAMESPACE,
        key,
        {"state": "requesting", "attempt": 1, "lease_until": now + 60, "binding_message": "Buy 10 MSFT"},
    )
    tool = wrap(RecordingTool().tool(), store, client)
    ctx = tool_context("call-crashed")
    with pytest.raises(AuthorizationPendingInterrupt) as inflight:
        await tool.run(ARGS, ctx)  # the lease still runs: the sender may be alive
    assert inflight.value.next_check_at == pytest.approx(now + 60)
    assert (await stats(authz))["backchannel_requests"] == 0

    record = await store.get(PENDING_NAMESPACE, key)
    await store.put(PENDING_NAMESPACE, key, {**record, "lease_until": now - 1})
    with caplog.at_level(logging.WARNING, logger="tools.async_confirmation"):
        results = await asyncio.gather(*(tool.run(ARGS, ctx) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, AuthorizationPendingInterrupt) for r in results)
    assert "sending it again" in caplog.text
    assert (await stats(authz))["backchannel_requests"] == 1
    assert (await store.get(PENDING_NAMESPACE, key))["auth_req_id"]


async def test_expired_by_the_local_deadline_even_if_the_server_still_waits(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """Our deadline is final: a server that still says pending after it gets one last poll, then expiry."""
    tool = wrap(RecordingTool().tool(), store, client)
    ctx = tool_context("call-deadline")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    key = "thread-1:buy:call-deadline"
    record = await store.get(PENDING_NAMESPACE, key)
    await store.put(PENDING_NAMESPACE, key, {**record, "expires_at": time.time() - 1, "next_poll_at": 0})
    result = await tool.run(ARGS, ctx)
    assert result == AuthorizationRequestExpiredInterrupt.default_message
    assert (await stats(authz))["token_requests"] == 1  # the last-chance poll


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


@pytest.mark.parametrize("approved_first", [False, True])
async def test_records_that_cannot_be_decrypted_end_the_call_clearly(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    approved_first: bool,
) -> None:
    """The encryption key changed while a purchase waited (pending) or after its approval: the call ends
    with a clear "lost, ask again" result at once, never a hang and never a second push by itself."""
    raw = RecordingTool()
    ctx = tool_context(f"call-rotated-{approved_first}")
    with pytest.raises(AuthorizationPendingInterrupt):
        await wrap(raw.tool(), store, client).run(ARGS, ctx)
    if approved_first:  # an approved credential, written under the old key
        approved = {"credentials": {"access_token": "token-under-the-old-key"}}
        await store.put(CREDENTIALS_NAMESPACE, f"thread-1:buy:{ctx.tool_call_id}", approved, ttl=60)
    rotated = SQLiteCredentialStore(store.path, "a different key that is long enough for the check")
    try:
        with pytest.raises(ToolError, match="lost.*ask again"):
            await wrap(raw.tool(), rotated, client).run(ARGS, ctx)
        with pytest.raises(ToolError, match="lost.*ask again"):  # and it stays so, readable under the new key
            await wrap(raw.tool(), rotated, client).run(ARGS, ctx)
    finally:
        await rotated.close()
    assert (await stats(authz))["backchannel_requests"] == 1


async def test_an_approval_lost_with_its_answer_is_asked_again_not_wasted(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """The user approves; the poll that fetches the tokens never gets its answer (the server hands them out,
    the answer is late and the client gives up, as when the process dies mid-poll), so the server has spent
    the request. The next check's `invalid_grant` is then a lost approval, not a refusal: one new request
    for the same call, and once that is approved the tool runs, once."""
    raw = RecordingTool()
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context("call-lost")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    first = await only_request(authz)
    await decide(authz, first["id"], approve=True)
    authz.delay_answers(client.timeout + 3.0)
    with pytest.raises(AuthorizationPollingInterrupt) as lost:  # the poll timed out: maybe answered
        await run_until_done_or_polling(tool, ctx)
    assert lost.value.reason == "transient_error"
    spent = [r for r in await requests_for(authz, status=None) if r["id"] == first["id"]]
    assert spent and spent[0]["finished"], "the server must have handed the tokens to the lost poll"
    with pytest.raises(AuthorizationPendingInterrupt):
        await run_until_asked_again(tool, ctx)
    again = await only_request(authz)
    assert again["id"] != first["id"] and again["binding_message"] == first["binding_message"]
    await decide(authz, again["id"], approve=True)
    assert await run_until_done(tool, ctx) == "bought 10 MSFT"
    assert len(raw.runs) == 1
    assert (await stats(authz))["backchannel_requests"] == 2


async def run_until_done_or_polling(tool: Tool, ctx: ToolContext, timeout: float = 15.0) -> Any:
    """Run the call at its check times until a check raises a polling interrupt (or it finishes)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return await tool.run(ARGS, ctx)
        except AuthorizationPendingInterrupt as interrupt:
            await sleep_until(min(interrupt.next_check_at or time.time(), deadline))
    raise AssertionError("no polling interrupt")


async def run_until_asked_again(tool: Tool, ctx: ToolContext, timeout: float = 15.0) -> Any:
    """Checks until the call is pending on a new request (a polling interrupt means: not yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return await tool.run(ARGS, ctx)
        except AuthorizationPollingInterrupt as interrupt:
            await sleep_until(min(interrupt.next_check_at or time.time(), deadline))
    raise AssertionError("the call was not asked again")
