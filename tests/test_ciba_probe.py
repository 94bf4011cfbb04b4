"""The alarm probe of a pending CIBA request (`tools.ciba.probe`), without Ray: the probe polls in the
scheduler's place while the request is pending (and says when to look again), keeps an answer in the
hand-off store before the thread would be woken, and the thread's own check takes it from there (the tool
runs once, the provider is polled no more than needed); the probe and the thread never poll at once.
Real dev authorization server, real HTTP, real SQLite files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ARGS,
    RecordingTool,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    decide,
    encryption_key,  # noqa: F401  (fixture)
    only_request,
    run_until_done,
    stats,
    store,  # noqa: F401  (fixture)
    tool_context,
    wrap,
)
from tools.base import ToolContext
from tools.ciba.client import CIBAClient
from tools.ciba.confirmation import PENDING_NAMESPACE, AsyncUserConfirmationTool
from tools.ciba.credential_store import CredentialSealer, SQLiteCredentialStore
from tools.ciba.interrupts import AuthorizationPendingInterrupt
from tools.ciba.probe import CibaHandoff, check_sleeping_request, ciba_handoff
from tools.ciba.types import Approved, TokenSet


@pytest.fixture
def deployment(authz: DevAuthorizationServer, encryption_key: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The scheduler's process learns the provider and the key from the environment, as in a deployment."""
    monkeypatch.setenv("AUTH_ISSUER", authz.issuer)
    monkeypatch.setenv("AUTH0_CLIENT_ID", authz.client_id)
    monkeypatch.setenv("AUTH0_CLIENT_SECRET", authz.client_secret)
    monkeypatch.setenv("AUTH0_SESSION_ENCRYPTION_KEY", encryption_key)


async def _pending_call(
    raw: RecordingTool, credentials: SQLiteCredentialStore, ciba: CIBAClient, root: Path, call_id: str
) -> tuple[AsyncUserConfirmationTool, ToolContext]:
    """A call of the wrapped tool whose request waits for the user: ping mode with a safety-net check every
    second (the request's interval), and the root's hand-off."""
    tool = wrap(
        raw.tool(),
        credentials,
        ciba,
        delivery_mode="ping",
        ping_key=b"k" * 32,
        ping_fallback=1.0,
        handoff=ciba_handoff(root),
    )
    assert isinstance(tool, AsyncUserConfirmationTool)
    ctx = tool_context(call_id, thread_id=f"thread-{call_id}")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    return tool, ctx


async def test_the_probe_defers_while_pending_and_hands_the_approval_to_the_thread(
    deployment: None,
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    raw = RecordingTool()
    tool, ctx = await _pending_call(raw, store, client, tmp_path, "call-probe")
    payload = await tool.confirmation.flow.probe_payload(ctx)
    assert payload is not None
    request = await only_request(authz)
    record = await store.get(PENDING_NAMESPACE, tool.confirmation.flow.key_for(ctx))
    assert record["auth_req_id"] not in payload  # sealed: the request's handle is not readable

    async def polls() -> int:
        return int((await stats(authz))["polls_by_request"][request["id"]])

    # pending: the probe polls once and names a later time; nothing is kept
    before = await polls()
    until = await check_sleeping_request(payload, tmp_path)
    assert until is not None and until > time.time()
    assert await polls() == before + 1
    assert (await ciba_handoff(tmp_path).claim("nobody", lease=1.0, by="thread")).kind == "claimed"

    # approved: the probe takes the token and keeps it (sealed) before saying "wake the thread"
    await decide(authz, request["id"], approve=True)
    assert await check_sleeping_request(payload, tmp_path) is None
    polls_by_probe = await polls()
    assert polls_by_probe == before + 2
    assert raw.runs == []

    # the thread's check finds the answer in the hand-off: no poll of its own, the tool runs once
    result = await run_until_done(tool, ctx)
    assert result == "bought 10 MSFT" and len(raw.runs) == 1
    assert await polls() == polls_by_probe
    assert (await stats(authz))["backchannel_requests"] == 1
    # settled: a later claim starts fresh, and the probe of the spent request wakes nobody twice
    handoff_key = tool.confirmation.flow.handoff_key(ctx)
    assert (await ciba_handoff(tmp_path).claim(handoff_key, lease=1.0, by="thread")).kind == "claimed"


async def test_the_thread_waits_while_a_probe_polls_and_never_polls_the_same_request_at_once(
    deployment: None,
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    tool, ctx = await _pending_call(RecordingTool(), store, client, tmp_path, "call-busy")
    handoff = ciba_handoff(tmp_path)
    key = tool.confirmation.flow.handoff_key(ctx)
    # a probe holds the request (its poll in flight): the thread's check does not poll, and looks again soon
    assert (await handoff.claim(key, lease=30.0, by="probe")).kind == "claimed"
    await asyncio.sleep(1.1)  # past the request's 1 s interval, so the thread's check is due
    polls = (await stats(authz))["polls_by_request"]
    started = time.time()
    with pytest.raises(AuthorizationPendingInterrupt) as waiting:
        await tool.run(ARGS, ctx)
    assert waiting.value.next_check_at is not None and waiting.value.next_check_at <= time.time() + 1.5
    assert time.time() - started >= 1.9  # it waited for the probe's answer a little first
    assert (await stats(authz))["polls_by_request"] == polls
    # and the other way round: while the thread holds it, a probe stands back (and wakes nobody)
    await handoff.settle(key)
    assert (await handoff.claim(key, lease=30.0, by="thread")).kind == "claimed"
    assert (await handoff.claim(key, lease=1.0, by="probe")).kind == "busy"
    # the thread's own claim left by a process that died is the thread's again at once, warned
    taken = await handoff.claim(key, lease=30.0, by="thread")
    assert taken.kind == "claimed" and taken.lost_before


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The root's shared stores on SQLite files, or in a real PostgreSQL (`AGENT_STORAGE_URL`)."""
    from runtime.settings import runtime_settings

    if request.param == "postgres":
        monkeypatch.setenv("AGENT_STORAGE_URL", request.getfixturevalue("postgres").url)
    runtime_settings.cache_clear()
    yield request.param
    runtime_settings.cache_clear()


async def test_a_probe_that_never_came_back_counts_as_an_answer_maybe_lost(backend: str, tmp_path: Path) -> None:
    sealer = CredentialSealer("k" * 64)
    handoff = CibaHandoff(tmp_path, sealer)
    assert (await handoff.claim("a", lease=0.05, by="probe")).kind == "claimed"
    await asyncio.sleep(0.1)  # its lease ran out: the poll's answer (perhaps a token) is lost
    assert (await handoff.claim("a", lease=5.0, by="probe")).kind == "lost"  # a probe wakes the thread
    taken = await handoff.claim("a", lease=5.0, by="thread")  # the thread takes it over, warned
    assert taken.kind == "claimed" and taken.lost_before
    # a poll that failed on the way says so at once: the next claim need not wait out the lease
    await handoff.lost("a")
    assert (await handoff.claim("a", lease=5.0, by="probe")).kind == "lost"
    again = await handoff.claim("a", lease=5.0, by="thread")
    assert again.kind == "claimed" and again.lost_before
    # an answer kept is handed over whole, until settled
    await handoff.answer("a", Approved(TokenSet(access_token="secret-token", expires_in=60)))
    raw = await handoff.storage.fetchone("SELECT answer FROM claims WHERE call_key = 'a'")
    assert b"secret-token" not in bytes(raw["answer"])
    handed = await handoff.claim("a", lease=5.0, by="thread")
    assert handed.kind == "answered" and isinstance(handed.answer, Approved)
    assert handed.answer.tokens.access_token == "secret-token"
    await handoff.settle("a")
    assert (await handoff.claim("a", lease=5.0, by="thread")).kind == "claimed"
    await handoff.settle("a")  # the database is shared by the session's tests
    await handoff.storage.close()
    if backend == "postgres":
        from runtime.pg_pool import close_pools

        await close_pools()
