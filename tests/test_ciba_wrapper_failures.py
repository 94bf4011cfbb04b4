"""`with_async_user_confirmation` end to end when something goes wrong: transient and permanent tool
failures (the credential kept for a retry, or spent), refusals as typed results without a push, a
the local deadline, records that cannot be decrypted, and an
approval lost with its answer asked again. Real dev server, real HTTP, real SQLite file."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ARGS,
    RecordingTool,
    assert_spent,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    decide,
    encryption_key,  # noqa: F401  (fixture)
    only_request,
    requests_for,
    run_until_done,
    sleep_until,
    stats,
    store,  # noqa: F401  (fixture)
    tool_context,
    wrap,
)
from tools.base import Tool, ToolContext, ToolError, TransientToolError
from tools.ciba.client import CIBAClient
from tools.ciba.confirmation import (
    CREDENTIALS_NAMESPACE,
    PENDING_NAMESPACE,
)
from tools.ciba.credential_store import SQLiteCredentialStore
from tools.ciba.interrupts import (
    AuthorizationPendingInterrupt,
    AuthorizationPollingInterrupt,
    AuthorizationRequestExpiredInterrupt,
)


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


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_error_after_the_tokens_were_issued_is_a_lost_answer_not_a_refusal(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    status: int,
) -> None:
    """Review hole 3: the provider handed out the tokens, and a gateway in front of it answered 502/504.
    Polling again at once would meet `invalid_grant` (the request is spent) and end the call as refused;
    a 502/504 may have been acted on, so the call backs off, and the next check asks the user once more."""
    raw = RecordingTool()
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context(f"call-gateway-{status}")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    first = await only_request(authz)
    await decide(authz, first["id"], approve=True)
    authz.replace_answers(1, status)
    with pytest.raises(AuthorizationPollingInterrupt) as lost:
        await run_until_done_or_polling(tool, ctx)
    assert lost.value.reason == "transient_error"
    again = await run_until_a_new_request(authz, tool, ctx, first["id"])
    await decide(authz, again["id"], approve=True)
    assert await run_until_done(tool, ctx) == "bought 10 MSFT"
    assert len(raw.runs) == 1


async def run_until_a_new_request(
    authz: DevAuthorizationServer,  # noqa: F811
    tool: Tool,
    ctx: ToolContext,
    old_id: str,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Run the call at its check times until the user has a new pending request for it; a result first
    (the call ended, as a refusal) fails."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            result = await tool.run(ARGS, ctx)
        except (AuthorizationPendingInterrupt, AuthorizationPollingInterrupt) as interrupt:
            fresh = [r for r in await requests_for(authz) if r["id"] != old_id]
            if fresh:
                return fresh[0]
            await sleep_until(min(interrupt.next_check_at or time.time(), deadline))
        else:
            raise AssertionError(f"the call ended instead of asking again: {result!r}")
    raise AssertionError("the call was not asked again")


async def test_a_slow_provider_gets_at_most_the_capped_requests_then_the_call_ends_clearly(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """Review hole 4: every backchannel request reaches the provider, which acts on it (a push to the
    user's phone) but answers too late for the client. Each check used to send a new one, for as long as
    the provider stayed slow; now the call sends at most `MAX_REQUESTS_PER_CALL`, backing off, then ends
    with a result that says what happened, and its record lives no longer than the first request would."""
    from tools.ciba.options import MAX_REQUESTS_PER_CALL

    raw = RecordingTool()
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context("call-slow-provider")
    await client.discover()  # the provider's document first: from here on it acts at once, answers late
    authz.delay_answers(120.0)  # every answer arrives after the client's timeout (2 s)
    started = time.time()
    result = await run_until_done(tool, ctx, timeout=60.0)
    assert "could not be completed" in result and "Ask again later" in result
    assert authz.state.backchannel_requests == MAX_REQUESTS_PER_CALL
    assert raw.runs == []
    assert await store.get(PENDING_NAMESPACE, f"thread-1:buy:{ctx.tool_call_id}") is None
    assert time.time() - started < 60.0


async def test_a_spent_approval_is_remembered_past_the_retention_so_a_late_rerun_never_asks_again(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """Review hole 9: the tool ran with the approval, then the agent could not record the result for longer
    than `pending_retention` (a cluster down for that long). Its re-run must replay the outcome, not find
    nothing and send the user a new request."""
    import dataclasses

    raw = RecordingTool()
    tool = wrap(raw.tool(), store, client)
    flow = tool.confirmation.flow  # type: ignore[attr-defined]
    flow.options = dataclasses.replace(flow.options, pending_retention=0.5)
    ctx = tool_context("call-late-result")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    await decide(authz, (await only_request(authz))["id"], approve=True)
    assert await run_until_done(tool, ctx) == "bought 10 MSFT"
    await sleep_until(time.time() + 1.0)  # twice the retention: anything kept for it is gone
    assert await tool.run(ARGS, ctx) == "bought 10 MSFT"  # the outcome, replayed
    assert len(raw.runs) == 1
    assert (await stats(authz))["backchannel_requests"] == 1
    assert await requests_for(authz) == []


async def test_an_approval_that_expires_while_the_outcome_is_unknown_never_invites_a_repeat(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """Review hole 2: the tool may have had its effect (`OutcomeUnknownError`) and could not find out before
    the approved token expired. The call ends as "unknown, do not repeat", never as "expired, ask again"."""
    from tools.base import OutcomeUnknownError

    raw = RecordingTool()
    raw.fail_next = OutcomeUnknownError("the answer was lost", 1.0)
    tool = wrap(raw.tool(), store, client)
    ctx = tool_context("call-unknown-expired")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    await decide(authz, (await only_request(authz))["id"], approve=True)
    with pytest.raises(OutcomeUnknownError):
        await run_until_done(tool, ctx)
    key = f"thread-1:buy:{ctx.tool_call_id}"
    stored = await store.get(CREDENTIALS_NAMESPACE, key)
    assert stored["outcome_unknown"] is True
    stored["credentials"]["expires_at"] = time.time() - 1  # the token expired while nobody could find out
    await store.put(CREDENTIALS_NAMESPACE, key, stored)
    result = await tool.run(ARGS, ctx)
    assert result.startswith("Outcome unknown") and "do not repeat" in result and "ask again" not in result
    assert len(raw.runs) == 1 and (await stats(authz))["backchannel_requests"] == 1
