"""`DevAuthorizationServer`: the dev authorization server on a loopback port, in a background thread.

This is what the stack, the tests and the benchmark start. It owns the port and the `AuthzState`, and
runs an app from `create_authz_app` over them, so `stop()` then `start()` is a restart that keeps every
request, the client and the signing key:

    server = DevAuthorizationServer(api_audience="https://agents.test/api").start()
    server.issuer       # "http://127.0.0.1:PORT/"  (Auth0 style: trailing slash)
    server.client_id, server.client_secret   # generated unless given; never printed
    ...
    server.stop()
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from auth.issuer import is_loopback_host
from devservers.authz.app import create_authz_app
from devservers.authz.protocol import ENDPOINT_PATHS
from devservers.authz.state import create_state
from devservers.server_thread import ServerThread, free_port

__all__ = ["DevAuthorizationServer"]


class DevAuthorizationServer:
    """The dev authorization server on a loopback port, in a background thread (`start()`/`stop()`).

    The port is chosen before the app exists because the issuer must be the server's own URL with a
    trailing slash (`http://127.0.0.1:PORT/`), like Auth0's `https://tenant/`. `stop()` then `start()`
    serves the same state (requests, client, signing key) on the same port again.
    """

    def __init__(
        self,
        *,
        api_audience: str,
        clients: dict[str, str] | None = None,
        users: Iterable[str] = ("alice", "bob"),
        key_file: Path | str | None = None,
        default_interval: int = 5,
        host: str = "127.0.0.1",
        port: int | None = None,
        **options: Any,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError("the dev authorization server has unauthenticated approval endpoints: loopback only")
        self.host = host
        self.port = port or free_port(host)
        self.state = create_state(
            issuer=f"http://{host}:{self.port}/",
            api_audience=api_audience,
            clients=clients,
            users=users,
            key_file=key_file,
            default_interval=default_interval,
            **options,
        )
        self._thread: ServerThread | None = None

    def __repr__(self) -> str:
        return f"DevAuthorizationServer(issuer={self.issuer!r}, running={self.running})"

    @property
    def url(self) -> str:
        """The base URL without a trailing slash (`{url}/dev/login`, `{url}/approvals`)."""
        return f"http://{self.host}:{self.port}"

    @property
    def issuer(self) -> str:
        return self.state.issuer

    @property
    def client_id(self) -> str:
        """The first (by default the only, generated) client's id."""
        return next(iter(self.state.clients))

    @property
    def client_secret(self) -> str:
        return self.state.clients[self.client_id]

    @property
    def jwks_url(self) -> str:
        return self.issuer + ENDPOINT_PATHS[self.state.endpoint_paths]["jwks"]

    @property
    def approvals_url(self) -> str:
        return self.url + "/approvals"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout: float = 15.0) -> DevAuthorizationServer:
        if self._thread is None:
            thread = ServerThread(create_authz_app(state=self.state), host=self.host, port=self.port)
            thread.start(timeout)
            self._thread = thread
        return self

    def stop(self) -> None:
        """Stop serving; a fault still playing ends first, so no request is left waiting on it."""
        self.state.stall.end()
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def stall(self, seconds: float) -> None:
        """Answer nothing for `seconds` (connections are accepted; each request waits for the end)."""
        self.state.stall.hold(seconds)

    def delay_answers(self, seconds: float) -> None:
        """For `seconds`, serve each request at once but send its answer only then (answers lost on the way
        to a client whose timeout is shorter)."""
        self.state.stall.delay_answers(seconds)

    def replace_answers(self, count: int, status: int = 502, path: str = "token") -> None:
        """Serve the next `count` requests whose path contains `path` (default: the token endpoint) and
        answer each with `status` instead (a gateway error after the server acted: tokens handed out)."""
        self.state.stall.replace_answers(count, status, path)

    def __enter__(self) -> DevAuthorizationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
