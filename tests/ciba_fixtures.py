"""Shared fixtures and helpers of the CIBA tests: a real dev authorization server on 127.0.0.1, real
CIBA clients talking HTTP to it, and encrypted SQLite stores in tmp_path.

Import what a test module uses explicitly (`from tests.ciba_fixtures import authz, ...`): pytest finds
fixtures by the names a module imports.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import BaseModel

from devservers.authz_server import DevAuthorizationServer
from tools.base import Tool, ToolContext, TransientToolError
from tools.ciba.client import CIBAClient, RetryPolicy
from tools.ciba.confirmation import with_async_user_confirmation
from tools.ciba.credential_store import SQLiteCredentialStore
from tools.ciba.credentials_context import get_ciba_credentials
from tools.ciba.interrupts import AuthorizationPendingInterrupt, AuthorizationPollingInterrupt

API_AUDIENCE = "https://agents.test/api"
CHECKOUT_AUDIENCE = "http://localhost:5000/api/checkout"
ALICE = "auth0|alice"

#: Fast retries: a test that provokes an outage should not wait for production backoff.
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, jitter=0.0)


def start_server(**options: Any) -> DevAuthorizationServer:
    options.setdefault("default_interval", 1)
    return DevAuthorizationServer(api_audience=API_AUDIENCE, **options).start()


@pytest.fixture
def authz() -> Iterator[DevAuthorizationServer]:
    """A fresh dev authorization server per test (interval 1 s), so counters start at zero."""
    server = start_server(users=("alice", "bob", "carol"), users_without_push=frozenset({"carol"}))
    yield server
    server.stop()


def make_client(server: DevAuthorizationServer, auth_method: str = "client_secret_post", **kwargs: Any) -> CIBAClient:
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("timeout", 2.0)
    return CIBAClient(
        issuer=server.issuer,
        client_id=server.client_id,
        client_secret=server.client_secret,
        auth_method=auth_method,  # type: ignore[arg-type]
        **kwargs,
    )


@pytest_asyncio.fixture(loop_scope="function")
async def client(authz: DevAuthorizationServer) -> AsyncIterator[CIBAClient]:
    ciba = make_client(authz)
    yield ciba
    await ciba.aclose()


@pytest.fixture
def encryption_key() -> str:
    return secrets.token_hex(32)


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path, encryption_key: str) -> AsyncIterator[SQLiteCredentialStore]:
    sqlite_store = SQLiteCredentialStore(tmp_path / "credentials.sqlite3", encryption_key)
    yield sqlite_store
    await sqlite_store.close()


# -- the user's phone and the server's counters --------------------------------------------------------


async def stats(server: DevAuthorizationServer) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{server.url}/dev/stats")).json()


async def requests_for(server: DevAuthorizationServer, user: str = "alice", status: str | None = "pending") -> list:
    params = {"user": user, **({"status": status} if status else {})}
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{server.url}/dev/ciba/requests", params=params)
        response.raise_for_status()
        return response.json()


async def only_request(server: DevAuthorizationServer, user: str = "alice") -> dict[str, Any]:
    (request,) = await requests_for(server, user)
    return request


async def decide(server: DevAuthorizationServer, request_id: str, approve: bool) -> dict[str, Any]:
    action = "approve" if approve else "deny"
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(f"{server.url}/dev/ciba/requests/{request_id}/{action}")
        response.raise_for_status()
        return response.json()


async def sleep_until(when: float) -> None:
    """Wait for a known moment (a poll interval the server imposes), not a guessed duration."""
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# -- a tool to wrap ----------------------------------------------------------------------------------


class BuyArgs(BaseModel):
    ticker: str
    quantity: int


class RecordingTool:
    """A raw tool that records each run and the credential it saw (fails on demand: `fail_next` is the
    exception its next run raises, or True for a transient outage)."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.fail_next: bool | Exception = False

    def tool(self) -> Tool:
        async def buy(ticker: str, quantity: int) -> str:
            credentials = get_ciba_credentials()
            self.runs.append({"ticker": ticker, "quantity": quantity, "credentials": credentials})
            if self.fail_next:
                failure = self.fail_next
                self.fail_next = False
                raise failure if isinstance(failure, Exception) else TransientToolError("checkout unavailable", 1.0)
            return f"bought {quantity} {ticker}"

        return Tool(buy, name="buy", description="Buy shares.", parameters=BuyArgs)


def tool_context(
    tool_call_id: str | None = None, owner: str | None = ALICE, thread_id: str = "thread-1"
) -> ToolContext:
    return ToolContext(tool_call_id=tool_call_id or "call-" + secrets.token_hex(4), thread_id=thread_id, owner=owner)


def binding_for(ticker: str, quantity: int) -> str:
    return f"Buy {quantity} {ticker}"


# -- the tool wrapped with `with_async_user_confirmation` ---------------------------------------------

ARGS = BuyArgs(ticker="MSFT", quantity=10)


def owner(**_: Any) -> str:
    """What the chat agent passes as `user_id`: the thread's owner, never a tool argument."""
    from tools.base import current_tool_context

    owner = current_tool_context().owner
    assert owner
    return owner


def wrap(raw: Tool, store: SQLiteCredentialStore, client: CIBAClient, **options: Any) -> Tool:
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


def assert_spent(stored: Any, *, result: Any = None, error: str | None = None) -> None:
    """The credential row now holds the call's outcome, and no token any more."""
    assert stored is not None and stored.get("done") is True and "credentials" not in stored, stored
    assert stored["result"] == result and stored["error"] == error
