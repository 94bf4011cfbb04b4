"""Sending a tool call's CIBA request again (`tools.ciba.flow`) when its first sending may have died
half-way: a record left "requesting" past its lease is sent once more, by one caller; a resend claimed by a
process that died before recording it is not waited for forever. Real dev server, real HTTP, real SQLite
file; what a dead process leaves is written directly (killing a process at that exact line is what the chat
tests do)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from devservers.authz_server import DevAuthorizationServer
from tests.ciba_fixtures import (
    ARGS,
    RecordingTool,
    authz,  # noqa: F401  (fixture)
    client,  # noqa: F401  (fixture)
    encryption_key,  # noqa: F401  (fixture)
    stats,
    store,  # noqa: F401  (fixture)
    tool_context,
    wrap,
)
from tools.ciba.client import CIBAClient
from tools.ciba.confirmation import PENDING_NAMESPACE
from tools.ciba.credential_store import SQLiteCredentialStore
from tools.ciba.interrupts import AuthorizationPendingInterrupt
from tools.ciba.options import ATTEMPTS_NAMESPACE


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
    with caplog.at_level(logging.WARNING, logger="tools.ciba.confirmation"):
        results = await asyncio.gather(*(tool.run(ARGS, ctx) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, AuthorizationPendingInterrupt) for r in results)
    assert "sending it again" in caplog.text
    assert (await stats(authz))["backchannel_requests"] == 1
    assert (await store.get(PENDING_NAMESPACE, key))["auth_req_id"]


async def test_a_resend_claimed_by_a_process_that_died_before_sending_is_sent_by_the_next_check(
    authz: DevAuthorizationServer,  # noqa: F811
    client: CIBAClient,  # noqa: F811
    store: SQLiteCredentialStore,  # noqa: F811
) -> None:
    """Found by the soak: a host killed between claiming resend #2 and recording it left a claim that every
    later check took for a sender at work, so the call waited forever. Simulated by writing what that
    process left: the record still at attempt 1 past its lease, and the claim of attempt 2."""
    key = "thread-1:buy:call-claimed"
    now = time.time()
    record = {"state": "requesting", "attempt": 1, "pushes": 1, "lease_until": now - 1, "created_at": now}
    await store.put(PENDING_NAMESPACE, key, {**record, "binding_message": "Buy 10 MSFT"})
    await store.put(ATTEMPTS_NAMESPACE, f"{key}#2", {"at": now})
    tool = wrap(RecordingTool().tool(), store, client)
    ctx = tool_context("call-claimed")
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)  # the claim is fresh: its claimer may be sending right now
    assert (await stats(authz))["backchannel_requests"] == 0

    await store.put(ATTEMPTS_NAMESPACE, f"{key}#2", {"at": now - 3600})  # the claimer is long gone
    with pytest.raises(AuthorizationPendingInterrupt):
        await tool.run(ARGS, ctx)
    assert (await stats(authz))["backchannel_requests"] == 1
    stored = await store.get(PENDING_NAMESPACE, key)
    assert stored["auth_req_id"] and stored["attempt"] == 3 and stored["pushes"] == 2
