"""`agentrt.testing`: test an agent of your own inside the real runtime, the way Cloudflare's agents are
tested inside workerd: a pytest plugin (installed with the package, nothing to enable) whose fixtures start
the embedded stack once per test session (local Ray, the Serve ingress, the dev authorization server with
its "phone", the demo checkout API, the offline model) serving your agent, and drive it over HTTP.

    # conftest.py: which agent the session serves (default: the demo's agents.chat:Chat)
    @pytest.fixture(scope="session")
    def agentrt_agent() -> str:
        return "my_package.expenses:ExpenseAgent"

    # test_expenses.py
    async def test_an_approved_expense_is_submitted(agentrt):
        async with agentrt.client("alice") as alice:              # an authenticated agentrt.client
            sent = await alice.send_message("t-1", '/submit_expense {"amount": 12.5, "merchant": "Acme"}')
            await agentrt.approve("alice", binding_message="Expense 12.50 at Acme")   # on alice's phone
            reply = await agentrt.next_message(alice, "t-1", after=sent[-1])
            assert "Submitted" in reply["content"]

Fixtures: `agentrt` (a `TestKit`, per test: requests a test leaves pending on the phone are denied after
it), `agentrt_stack` (the session's `agentrt.stack.Stack`), and two to override in a `conftest.py`:
`agentrt_agent` (`module:Class` of a `ThreadAgent` subclass, importable from the folder pytest runs in)
and `agentrt_env` (more environment for the agents, e.g. `{"CHAT_MAX_STEPS": "3"}`). The offline model
calls a tool when a message is `/tool_name {json arguments}`. The kit embeds every service whatever the
environment says (`AUTH0_*`, `OPENAI_*` are ignored), starts its own Ray (so the test process must not
have started one), and needs pytest-asyncio (or any runner of async tests) for its async methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest

from agentrt.client import AgentRuntimeClient

DEV_USERS = ("alice", "bob", "carol")
"""The demo users of the kit's dev authorization server."""

_REAL_SERVICES = ("AUTH0_", "AUTH_", "CIBA_", "OPENAI_", "CHECKOUT_", "AGENT_", "AGENTRT_", "RAY_ADDRESS")


class TestKit:
    """What a test needs to drive its agent: users' clients, their phone, and waiting on a thread."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.url: str = stack.urls.api
        """The HTTP API of the served agent."""
        self.authz_url: str = stack.urls.authz
        self._tokens: dict[str, str] = {}

    # -- users -----------------------------------------------------------------------------------------
    def token(self, username: str = "alice") -> str:
        """A bearer token of a demo user (one of `DEV_USERS`) for the API."""
        if username not in self._tokens:
            response = httpx.post(f"{self.authz_url}/dev/login", json={"username": username}, timeout=30)
            response.raise_for_status()
            self._tokens[username] = response.json()["access_token"]
        return self._tokens[username]

    def client(self, username: str = "alice") -> AgentRuntimeClient:
        """An `agentrt.client.AgentRuntimeClient` signed in as `username` (use it with `async with`)."""
        return AgentRuntimeClient(self.url, self.token(username))

    # -- the user's phone ------------------------------------------------------------------------------
    def _phone(self, username: str) -> tuple[str, dict[str, str]]:
        return f"{self.authz_url}/dev/ciba/requests", {"user": username, "status": "pending"}

    async def pending_requests(self, username: str = "alice") -> list[dict[str, Any]]:
        """The CIBA requests waiting on `username`'s phone: `{id, binding_message, scope, audience, ...}`."""
        url, params = self._phone(username)
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(url, params=params)
        response.raise_for_status()
        return response.json()

    async def approve(
        self, username: str = "alice", *, binding_message: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait for the one pending request of `username` (with this binding message, if given) and approve
        it, as the user would on their phone; returns the request."""
        return await self._decide(username, binding_message, timeout, approve=True)

    async def deny(
        self, username: str = "alice", *, binding_message: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Like `approve`, but deny it."""
        return await self._decide(username, binding_message, timeout, approve=False)

    async def _decide(self, username: str, binding_message: str | None, timeout: float, approve: bool) -> dict:
        async def matching() -> list[dict[str, Any]]:
            found = await self.pending_requests(username)
            return [r for r in found if binding_message is None or r["binding_message"] == binding_message]

        requests = await _eventually(matching, timeout, f"a pending request for {username}")
        if len(requests) > 1:
            shown = ", ".join(repr(r["binding_message"]) for r in requests)
            raise AssertionError(f"{len(requests)} requests wait for {username} ({shown}): name binding_message=")
        (request,) = requests
        url, _ = self._phone(username)
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{url}/{request['id']}/{'approve' if approve else 'deny'}")
        response.raise_for_status()
        return request

    def deny_everything_pending(self) -> None:
        """Deny every request still waiting on the demo users' phones (a test's leftovers)."""
        with httpx.Client(timeout=30) as http:
            for username in DEV_USERS:
                url, params = self._phone(username)
                for request in http.get(url, params=params).json():
                    with contextlib.suppress(httpx.HTTPError):
                        http.post(f"{url}/{request['id']}/deny")

    # -- waiting on a thread ---------------------------------------------------------------------------
    async def next_message(
        self,
        client: AgentRuntimeClient,
        thread_id: str,
        *,
        after: dict[str, Any] | str | None = None,
        role: str = "assistant",
        containing: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The first message of `role` with text (containing `containing`, if given) that follows message
        `after` (a message, or its id; None: from the thread's start), waiting up to `timeout` seconds for
        it: an approval resolves by itself, later than the turn that asked for it."""
        after_id = after.get("id") if isinstance(after, dict) else after

        async def found() -> dict[str, Any] | None:
            messages = await client.messages(thread_id)
            ids = [m.get("id") for m in messages]
            start = ids.index(after_id) + 1 if after_id in ids else 0
            for message in messages[start:]:
                text = message.get("content") or ""
                if message["role"] == role and text and (containing is None or containing in text):
                    return message
            return None

        what = f"a {role} message{f' containing {containing!r}' if containing else ''} in {thread_id}"
        return await _eventually(found, timeout, what)


async def _eventually(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """`await check()`'s first truthy value, polled until `timeout` seconds from now."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s")
        await asyncio.sleep(0.2)


# -- the fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def agentrt_agent() -> str:
    """The thread agent the session serves (`module:Class`); override it in your `conftest.py`."""
    return "agents.chat:Chat"


@pytest.fixture(scope="session")
def agentrt_env() -> Mapping[str, str]:
    """More environment for the served agents; override it in your `conftest.py`."""
    return {}


@pytest.fixture(scope="session")
def agentrt_stack(
    agentrt_agent: str, agentrt_env: Mapping[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The embedded stack serving `agentrt_agent`, started once per session (about 15 s) and stopped after."""
    from agentrt.ingress.gateway import load_thread_agent_class
    from agentrt.stack import Stack, StackOptions

    load_thread_agent_class(agentrt_agent)  # a wrong class fails here, naming it, before anything starts
    importable = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    options = StackOptions(
        port=0,
        authz_port=None,
        checkout_port=None,
        model_port=None,
        storage_dir=tmp_path_factory.mktemp("agentrt"),
        ciba_interval=1,
        dev_users=DEV_USERS,
        env={k: v for k, v in os.environ.items() if not k.startswith(_REAL_SERVICES)},
        extra_env={"AGENTRT_AGENT_CLASS": agentrt_agent, "PYTHONPATH": importable, **agentrt_env},
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture
def agentrt(agentrt_stack: Any) -> Iterator[TestKit]:
    """A `TestKit` for this test; requests it leaves pending on the phones are denied afterwards."""
    kit = TestKit(agentrt_stack)
    yield kit
    kit.deny_everything_pending()
