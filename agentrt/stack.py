"""The whole service on one machine: Ray, the Serve ingress, and (by default) the embedded dev services.

`agentrt serve`, `agentrt demo`, the tests and the benchmark share this module:

    stack = Stack(StackOptions(port=8000)).start()   # returns once everything answers
    print(stack.urls)
    ...
    stack.stop()

What runs depends on the environment: each service that is not configured is embedded (the dev
authorization server, the demo checkout API, the offline model: see `agentrt.embedded`, which also builds
the agents' environment). Everything the agents need is passed to Ray as the job's `runtime_env` env vars
(and to the Serve replicas), never printed: the client secret and the session encryption key stay out of
the output and the URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentrt.embedded import (
    PASSTHROUGH_ENV,
    StackError,
    agent_env,
    check_external_auth,
    port_or_free,
    start_dev_authz,
    start_dev_checkout,
    start_offline_model,
    uses_dev_auth,
    uses_dev_checkout,
    uses_offline_model,
)
from runtime.private_files import private_dir

logger = logging.getLogger("agentrt.stack")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_AUTHZ_PORT = 8400
DEFAULT_CHECKOUT_PORT = 5000
DEFAULT_MODEL_PORT = 8300
APP_NAME = "agentrt"


def quiet_ray_loggers() -> None:
    """Keep Ray's and Serve's informational lines (the token-authentication notice, "Started Serve", ...)
    out of this process's terminal; they are still in Ray's log files."""
    import ray.serve  # noqa: F401  (configures its logger at import; adjust it afterwards)

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


@dataclass
class StackOptions:
    bind: str = DEFAULT_HOST
    """The interface the HTTP API listens on."""
    port: int = DEFAULT_PORT
    authz_port: int | None = DEFAULT_AUTHZ_PORT
    checkout_port: int | None = DEFAULT_CHECKOUT_PORT
    model_port: int | None = DEFAULT_MODEL_PORT
    strict_port: bool = False
    """Fail if the ingress port is taken (instead of falling back to a free port)."""
    storage_dir: Path = field(default_factory=lambda: Path(os.environ.get("AGENT_STORAGE_DIR") or "./.data"))
    namespace: str = field(default_factory=lambda: os.environ.get("AGENT_NAMESPACE") or "agents")
    ray_address: str | None = field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    """Connect to this Ray cluster; None starts a fresh local one (`use_current_ray` reuses the driver's)."""
    use_current_ray: bool = False
    num_cpus: int | None = None
    ciba_interval: int | None = None
    """The dev server's CIBA polling interval in seconds (None: its default)."""
    model_chunk_delay: float = 0.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """Where `AUTH0_*`, `OPENAI_*`, `CHECKOUT_*` are read from (the process environment by default)."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """More env vars for the agents (e.g. `PYTHONPATH`)."""
    num_replicas: int = 1
    dev_users: tuple[str, ...] = ("alice", "bob")
    """The dev authorization server's demo users (the soak benchmark signs in many)."""
    verbose: bool = False
    """Show Ray's own log lines (worker output, notices) here; by default they stay in Ray's log files."""


@dataclass
class StackUrls:
    api: str
    chat_page: str
    docs: str
    approvals: str | None
    authz: str | None
    checkout: str | None
    model: str | None


class Stack:
    """Starts and stops Ray, the embedded services and the Serve app, in that order (and the reverse)."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.authz: Any = None
        self.checkout: Any = None
        self.model: Any = None
        self.agent_env: dict[str, str] = {}
        self.urls: StackUrls | None = None
        self._started_ray = False
        self._started_serve = False
        self.log: Callable[[str], None] = lambda message: logger.info(message)

    # -- what to embed -------------------------------------------------------------------------------
    @property
    def env(self) -> Mapping[str, str]:
        return self.options.env

    def uses_dev_auth(self) -> bool:
        return uses_dev_auth(self.env)

    def uses_dev_checkout(self) -> bool:
        return uses_dev_checkout(self.env)

    def uses_offline_model(self) -> bool:
        return uses_offline_model(self.env)

    # -- start -----------------------------------------------------------------------------------------
    def start(self, *, timeout: float = 120.0) -> Stack:
        try:
            self._start_services()
            self.agent_env = self._agent_env()
            self._check_ciba_client()
            self._start_ray()
            self._start_serve(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ciba_settings(self) -> Any:
        from auth.settings import AuthSettings

        return AuthSettings(**{k: v for k, v in self.agent_env.items() if k.startswith(("AUTH", "CIBA_"))})

    def _check_ciba_client(self) -> None:
        """Fail at start-up, with a message naming what to fix, when the CIBA client cannot authenticate
        (a missing or unusable key, a wrong secret or key): otherwise every purchase would fail later."""
        from auth.settings import AuthConfigError
        from tools.ciba.client import CIBAClient, CIBAError, CIBATransientError

        try:
            client = CIBAClient.from_settings(self._ciba_settings().validate_for_ciba())
        except AuthConfigError as exc:
            raise StackError(str(exc)) from None

        async def check() -> None:
            async with client:
                await client.check_client_authentication()

        try:
            asyncio.run(check())
        except CIBAError as exc:
            raise StackError(
                f"the authorization server refused the CIBA client ({exc.error}): check AUTH0_CLIENT_ID and "
                "its secret (AUTH0_CLIENT_SECRET) or key (CIBA_CLIENT_ASSERTION_KEY_FILE)"
            ) from None
        except CIBATransientError as exc:
            self.log(f"warning: the authorization server did not answer the client check ({exc})")

    def _start_services(self) -> None:
        opts, storage = self.options, Path(self.options.storage_dir)
        if self.uses_dev_auth():
            self.authz = start_dev_authz(
                storage, self.env, port=opts.authz_port, users=opts.dev_users, ciba_interval=opts.ciba_interval
            )
            self.log(f"dev authorization server on {self.authz.url}")
        else:
            check_external_auth(self.env)
        if self.uses_dev_checkout():
            issuer = self.authz.issuer if self.authz is not None else None
            self.checkout = start_dev_checkout(storage, self.env, issuer=issuer, port=opts.checkout_port)
            self.log(f"demo checkout API on {self.checkout.api_url}")
        if self.uses_offline_model():
            self.model = start_offline_model(port=opts.model_port, chunk_delay=opts.model_chunk_delay)
            self.log(f"offline model on {self.model.base_url}")

    def _agent_env(self) -> dict[str, str]:
        opts = self.options
        return agent_env(
            self.env,
            Path(opts.storage_dir),
            opts.namespace,
            authz=self.authz,
            checkout=self.checkout,
            model=self.model,
            extra=opts.extra_env,
        )

    def _start_ray(self) -> None:
        import ray

        import runtime

        opts = self.options
        private_dir(opts.storage_dir)
        if opts.use_current_ray and ray.is_initialized():
            runtime.init(storage_dir=opts.storage_dir, namespace=opts.namespace, start_hosts=True)
            return
        if ray.is_initialized():
            raise StackError("Ray is already initialised in this process; use use_current_ray=True")
        kwargs: dict[str, Any] = {
            "address": opts.ray_address or "local",
            "namespace": opts.namespace,
            "runtime_env": {"env_vars": dict(self.agent_env)},
            "logging_level": logging.INFO if opts.verbose else logging.ERROR,
            "log_to_driver": opts.verbose,
        }
        if not opts.verbose:
            quiet_ray_loggers()
        if not opts.ray_address:
            kwargs["include_dashboard"] = False
            if opts.num_cpus is not None:
                kwargs["num_cpus"] = opts.num_cpus
        self.log("starting Ray" if not opts.ray_address else f"connecting to Ray at {opts.ray_address}")
        ray.init(**kwargs)
        self._started_ray = True
        runtime.init(storage_dir=opts.storage_dir, namespace=opts.namespace, start_hosts=True)

    def _start_serve(self, timeout: float) -> None:
        from ray import serve

        from agentrt.ingress import build_app

        opts = self.options
        port = opts.port if opts.strict_port else port_or_free(opts.port, opts.bind)
        if opts.strict_port and port_or_free(port, opts.bind) != port:
            raise StackError(f"port {port} on {opts.bind} is taken")
        self.log(f"starting the Serve app on http://{opts.bind}:{port}")
        serve.start(http_options={"host": opts.bind, "port": port}, detached=False)
        self._started_serve = True
        serve.run(
            build_app(self.agent_env, num_replicas=opts.num_replicas),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        shown_host = "127.0.0.1" if opts.bind in ("0.0.0.0", "::", "") else opts.bind
        api = f"http://{shown_host}:{port}"
        wait_for_http(api + "/healthz", timeout=timeout)
        if self.authz is not None:  # the dev client's backchannel_client_notification_endpoint
            self.authz.state.notification_endpoints[self.authz.client_id] = api + "/ciba/notify"
        approvals = self.agent_env.get("AGENTRT_APPROVALS_URL") or (
            self.authz.url + "/approvals" if self.authz is not None else None
        )
        self.urls = StackUrls(
            api=api,
            chat_page=api + "/",
            docs=api + "/docs",
            approvals=approvals,
            authz=self.authz.url if self.authz is not None else None,
            checkout=self.checkout.api_url if self.checkout is not None else None,
            model=self.model.base_url if self.model is not None else None,
        )

    # -- stop ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop what this stack started (Serve app, Ray if it started it, embedded servers). Idempotent."""
        import ray

        if self._started_serve and ray.is_initialized():
            from ray import serve

            with contextlib.suppress(Exception):
                if not self._started_ray:  # our Ray goes with everything on it; shutting Serve down first
                    serve.delete(APP_NAME)  # only makes Ray print its controller's retries
                    serve.shutdown()
            self._started_serve = False
        if self._started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._started_ray = False
        for name in ("model", "checkout", "authz"):
            server = getattr(self, name)
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
                setattr(self, name, None)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_http(url: str, *, timeout: float = 60.0, interval: float = 0.2) -> httpx.Response:
    """GET `url` until it answers 2xx, or raise `StackError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5.0)
            if response.status_code < 300:
                return response
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(interval)
    raise StackError(f"{url} did not answer within {timeout:.0f}s (last: {last})")


__all__ = ["PASSTHROUGH_ENV", "Stack", "StackError", "StackOptions", "StackUrls", "wait_for_http"]
