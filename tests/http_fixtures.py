"""The HTTP ingress on Ray Serve, for the HTTP, browser and CLI tests.

It reuses the session's `chat_world` (dev authorization server, checkout API, offline model, and Ray
already started with their env vars) and deploys the Serve app on a free 127.0.0.1 port, with the world's
env vars plus its own storage root and namespace given to the replicas explicitly (agents inherit them).

The deployment is started once per Ray session and shared by the modules that use it (`ensure_http_api`
caches it by Ray session; if another test restarted Ray meanwhile, it is deployed again). It stays up
until the session's Ray cluster goes away; Ray itself is left exactly as `chat_world` configured it.

The helpers at the end (`new_id`, `assert_error`, `read_events`, `assistant_text`) are what the HTTP API
tests use to call it and check its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentrt.client import ServerEvent
from agentrt.stack import wait_for_http
from devservers.server_thread import free_port

APP_NAME = "agentrt-tests"


@dataclass
class HttpApi:
    """A running ingress: `url`, and the world (users, their phone, the checkout's order count)."""

    url: str
    world: Any
    storage_dir: Path
    namespace: str
    session: str
    env: dict[str, str] = field(default_factory=dict)
    """What the deployment was given (a redeploy starts from it)."""

    def token(self, user: str) -> str:
        return self.world.token(user)

    def headers(self, user: str | None = None, token: str | None = None) -> dict[str, str]:
        value = token if token is not None else self.token(user or "alice")
        return {"Authorization": f"Bearer {value}"}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=kwargs.pop("timeout", 60.0), **kwargs)


_current: HttpApi | None = None


def _ray_session() -> str:
    import ray

    return ray.get_runtime_context().get_session_name()


THREADS_PER_USER = 60
STREAMS_PER_USER = 5
STREAMS_PER_THREAD = 3
"""The test deployment's caps on open event streams (bob's test fills them)."""
"""The per-user thread quota of the test deployment (carol, a user no other test uses, fills hers)."""


def ensure_http_api(world: Any, *, timeout: float = 120.0) -> HttpApi:
    """Deploy the ingress for `world` on the current Ray session (or return the one already there)."""
    global _current
    import ray
    from ray import serve

    from agentrt.ingress import build_app

    if not ray.is_initialized():
        raise RuntimeError("Ray must be running (the chat_world fixture starts it)")
    session = _ray_session()
    if _current is not None and _current.session == session and _current.world is world:
        with contextlib.suppress(Exception):
            wait_for_http(_current.url + "/healthz", timeout=5.0)
            return _current
    storage = Path(tempfile.mkdtemp(prefix="agentrt-http-"))
    namespace = "agentrt-http-" + secrets.token_hex(4)
    env = {
        **world.env,
        "AGENT_STORAGE_DIR": str(storage),
        "AGENT_NAMESPACE": namespace,
        "AGENTRT_DEV_AUTHZ_URL": world.authz.url,
        "AGENTRT_SSE_PING_SECONDS": "2",
        "AGENT_MAX_THREADS_PER_USER": str(THREADS_PER_USER),
        "AGENTRT_MAX_STREAMS_PER_USER": str(STREAMS_PER_USER),
        # the suite's few demo users send far more than a person would (the limit itself: test_turn_limits)
        "AGENTRT_MAX_TURNS_PER_MINUTE": "100000",
        "AGENTRT_MAX_CONCURRENT_TURNS": "1000",
        "AGENTRT_MAX_STREAMS_PER_THREAD": str(STREAMS_PER_THREAD),
        # CIBA ping mode for the threads behind the HTTP API (their hosts inherit the replicas' env); the
        # dev server pings /ciba/notify, and a lost ping is caught by a poll every 8 s: far enough away that a
        # thread waiting for its user sleeps meanwhile (a check due within 5 s keeps it live)
        "CIBA_DELIVERY_MODE": "ping",
        "CIBA_PING_FALLBACK_SECONDS": "8",
    }
    with contextlib.suppress(Exception):
        serve.shutdown()  # a previous session's (or a stale) Serve instance: start clean on a new port
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(env), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz", timeout=timeout)
    world.authz.state.notification_endpoints[world.authz.client_id] = url + "/ciba/notify"
    _current = HttpApi(url=url, world=world, storage_dir=storage, namespace=namespace, session=session, env=env)
    return _current


def shutdown_http_api() -> None:
    """Remove the Serve deployment (Ray stays up)."""
    global _current
    import ray
    from ray import serve

    if _current is not None and ray.is_initialized():
        with contextlib.suppress(Exception):
            serve.shutdown()
    _current = None


# -- calling the API and checking its answers --------------------------------------------------------


def new_id() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and body.get("detail"), body
    if code is not None:
        assert body["error"] == code, body
    return body


async def read_events(
    events: AsyncIterator[ServerEvent], until: Callable[[ServerEvent], bool], within: float = 30.0
) -> list[ServerEvent]:
    """Collect events until one satisfies `until` (deadline-bound)."""
    seen: list[ServerEvent] = []

    async def collect() -> list[ServerEvent]:
        async for event in events:
            seen.append(event)
            if until(event):
                return seen
        raise AssertionError(f"stream ended before the expected event; saw {[e.event for e in seen]}")

    try:
        return await asyncio.wait_for(collect(), within)
    except TimeoutError:
        raise AssertionError(f"timed out; saw {[(e.event, e.data) for e in seen][-10:]}") from None


def assistant_text(event: ServerEvent) -> str:
    if event.event != "message":
        return ""
    message = event.data["data"]["message"]
    return message["content"] or "" if message["role"] == "assistant" else ""
