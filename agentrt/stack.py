"""The whole service on one machine: Ray, the Serve ingress, and (by default) the embedded dev services.

`agentrt serve`, `agentrt demo`, the tests and the benchmark share this module:

    stack = Stack(StackOptions(port=8000)).start()   # returns once everything answers
    print(stack.urls)
    ...
    stack.stop()

What runs depends on the environment (`Stack.from_env()` reads it):

- no `AUTH0_DOMAIN`/`AUTH_ISSUER`: the dev authorization server (OIDC discovery, JWKS, demo users, CIBA,
  approval page) on 127.0.0.1, with a client secret generated once and kept in the storage folder (with
  the session encryption key, `agentrt.dev_secrets`) and its pending requests kept there too, so a restart
  loses no pending approval;
- no `CHECKOUT_API_URL`: the demo checkout API, trusting whichever issuer is in use;
- no `OPENAI_API_KEY`/`OPENAI_BASE_URL`: the offline OpenAI-compatible model.

Each embedded service takes its default port when free, else any free port. Everything the agents need is
passed to Ray as the job's `runtime_env` env vars (and to the Serve replicas), never printed: the client
secret and the session encryption key stay out of the output and the URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from agentrt.dev_secrets import load_or_create as load_or_create_dev_secrets
from agentrt.ingress.settings import IngressSettings
from agents.settings import ChatSettings
from auth.issuer import issuer_url
from auth.settings import AuthSettings
from devservers.server_thread import free_port
from runtime.settings import RuntimeSettings
from tools.stocks import StockToolSettings

logger = logging.getLogger("agentrt.stack")

DEFAULT_HOST = "127.0.0.1"
SERVICES_HOST = "127.0.0.1"
"""The embedded dev services always listen on loopback (the dev approval endpoints have no authentication)."""
DEFAULT_PORT = 8000
DEFAULT_AUTHZ_PORT = 8400
DEFAULT_CHECKOUT_PORT = 5000
DEFAULT_MODEL_PORT = 8300
DEV_API_AUDIENCE = "urn:agentrt:api"
DEV_CHECKOUT_AUDIENCE = "http://localhost:5000/api/checkout"
APP_NAME = "agentrt"


def settings_env_names(*classes: type[BaseSettings]) -> tuple[str, ...]:
    """The environment variables these settings classes read (their aliases, or prefix + field name)."""
    names: list[str] = []
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix") or "")
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names.extend(choice for choice in alias.choices if isinstance(choice, str))
            elif isinstance(alias, str):
                names.append(alias)
            else:
                names.append((prefix + name).upper())
    return tuple(dict.fromkeys(names))


#: Environment variables passed on to the agents when set in the caller's environment: whatever the
#: settings of the auth layer, the runtime, the chat agent, the stock tools and the ingress read.
PASSTHROUGH_ENV = settings_env_names(
    AuthSettings, RuntimeSettings, ChatSettings, StockToolSettings, IngressSettings
) + ("PYTHONPATH",)


def quiet_ray_loggers() -> None:
    """Keep Ray's and Serve's informational lines (the token-authentication notice, "Started Serve", ...)
    out of this process's terminal; they are still in Ray's log files."""
    import ray.serve  # noqa: F401  (configures its logger at import; adjust it afterwards)

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


class StackError(RuntimeError):
    """The stack could not start (a service did not come up, or the configuration is incomplete)."""


def port_or_free(preferred: int | None, host: str = DEFAULT_HOST) -> int:
    """`preferred` if it can be bound on `host` right now, else a free port."""
    if preferred:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, preferred))
                return preferred
            except OSError:
                pass
    return free_port(host)


@dataclass
class StackOptions:
    host: str = DEFAULT_HOST
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
        return not (self.env.get("AUTH0_DOMAIN") or self.env.get("AUTH_ISSUER"))

    def uses_dev_checkout(self) -> bool:
        return not self.env.get("CHECKOUT_API_URL")

    def uses_offline_model(self) -> bool:
        return not (self.env.get("OPENAI_API_KEY") or self.env.get("OPENAI_BASE_URL"))

    def _check_external_auth(self) -> None:
        needed = ["AUTH0_CLIENT_ID", "AUTH0_AUDIENCE"]
        if self.env.get("CIBA_CLIENT_AUTH_METHOD") != "private_key_jwt":
            needed.insert(1, "AUTH0_CLIENT_SECRET")
        missing = [name for name in needed if not self.env.get(name)]
        if missing:
            raise StackError(
                "AUTH0_DOMAIN/AUTH_ISSUER is set, so the real authorization server is used; also set "
                + ", ".join(missing)
            )

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
        from tools.ciba_client import CIBAClient, CIBAError, CIBATransientError

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
        opts = self.options
        if self.uses_dev_auth():
            from devservers.authz_server import DevAuthorizationServer

            kept = load_or_create_dev_secrets(Path(opts.storage_dir))
            kwargs: dict[str, Any] = {
                "api_audience": DEV_API_AUDIENCE,
                "host": SERVICES_HOST,
                "port": port_or_free(opts.authz_port, SERVICES_HOST),
                "key_file": Path(opts.storage_dir) / "dev-authz-signing-key.pem",
                # kept across restarts, so that a purchase pending when the service stopped can still be
                # approved and completed after it started again
                "clients": {kept.client_id: kept.client_secret},
                "requests_file": Path(opts.storage_dir) / "dev-authz-requests.json",
                "users": opts.dev_users,
            }
            if opts.ciba_interval is not None:
                kwargs["default_interval"] = opts.ciba_interval
            if self.env.get("CIBA_CLIENT_AUTH_METHOD") == "private_key_jwt":
                kwargs["client_keys"] = {kept.client_id: self._dev_client_public_key(kept.client_id)}
            self.authz = DevAuthorizationServer(**kwargs).start()
            self.log(f"dev authorization server on {self.authz.url}")
        else:
            self._check_external_auth()
        if self.uses_dev_checkout():
            from devservers.checkout_api import CheckoutServer

            if self.authz is not None:
                issuer = self.authz.issuer
            else:
                issuer = issuer_url(self.env.get("AUTH_ISSUER"), self.env.get("AUTH0_DOMAIN"))
            storage = Path(opts.storage_dir)
            storage.mkdir(parents=True, exist_ok=True)
            self.checkout = CheckoutServer(
                issuer=issuer,
                audience=self.env.get("CHECKOUT_AUDIENCE") or DEV_CHECKOUT_AUDIENCE,
                db_path=storage / "checkout-orders.sqlite3",
                host=SERVICES_HOST,
                port=port_or_free(opts.checkout_port, SERVICES_HOST),
            ).start()
            self.log(f"demo checkout API on {self.checkout.api_url}")
        if self.uses_offline_model():
            from devservers.offline_model import OfflineModelServer

            self.model = OfflineModelServer(
                host=SERVICES_HOST,
                port=port_or_free(opts.model_port, SERVICES_HOST),
                chunk_delay=opts.model_chunk_delay,
            ).start()
            self.log(f"offline model on {self.model.base_url}")

    def _dev_client_public_key(self, client_id: str) -> bytes:
        """private_key_jwt against the dev server: it registers the public half of the configured key."""
        from auth.settings import AuthConfigError, AuthSettings

        env = {k: v for k, v in self.env.items() if k.startswith("CIBA_")}
        try:
            return AuthSettings(AUTH0_CLIENT_ID=client_id, **env).require_assertion_signer().public_key_pem()
        except AuthConfigError as exc:
            raise StackError(str(exc)) from None

    def _agent_env(self) -> dict[str, str]:
        """Everything the agents and the ingress read, for the Ray job's runtime_env."""
        opts = self.options
        env = {name: self.env[name] for name in PASSTHROUGH_ENV if self.env.get(name)}
        if self.authz is not None:
            env.update(
                AUTH_ISSUER=self.authz.issuer,
                AUTH0_CLIENT_ID=self.authz.client_id,
                AUTH0_CLIENT_SECRET=self.authz.client_secret,
                AUTH0_AUDIENCE=DEV_API_AUDIENCE,
                AGENTRT_DEV_AUTHZ_URL=self.authz.url,
            )
            # the dev server pings the API when the user decided (CIBA ping mode), polling stays the fallback
            env.setdefault("CIBA_DELIVERY_MODE", "ping")
            env.pop("AUTH0_DOMAIN", None)
        if not env.get("AUTH0_SESSION_ENCRYPTION_KEY"):  # kept in the storage folder (0600), never printed
            env["AUTH0_SESSION_ENCRYPTION_KEY"] = load_or_create_dev_secrets(Path(opts.storage_dir)).encryption_key
        if self.checkout is not None:
            env["CHECKOUT_API_URL"] = self.checkout.api_url
            env["CHECKOUT_AUDIENCE"] = self.checkout.audience
        if self.model is not None:
            env.update(OPENAI_BASE_URL=self.model.base_url, OPENAI_API_KEY="offline", OPENAI_MODEL=self.model.model)
        env["AGENT_STORAGE_DIR"] = str(Path(opts.storage_dir).resolve())
        env["AGENT_NAMESPACE"] = opts.namespace
        env.update({k: str(v) for k, v in opts.extra_env.items()})
        return env

    def _start_ray(self) -> None:
        import ray

        import runtime

        opts = self.options
        Path(opts.storage_dir).mkdir(parents=True, exist_ok=True)
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
        port = opts.port if opts.strict_port else port_or_free(opts.port, opts.host)
        if opts.strict_port and port_or_free(port, opts.host) != port:
            raise StackError(f"port {port} on {opts.host} is taken")
        self.log(f"starting the Serve app on http://{opts.host}:{port}")
        serve.start(http_options={"host": opts.host, "port": port}, detached=False)
        self._started_serve = True
        serve.run(
            build_app(self.agent_env, num_replicas=opts.num_replicas),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        shown_host = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host
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
