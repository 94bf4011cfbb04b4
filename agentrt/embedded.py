"""The embedded dev services, and the environment the agents get: what `Stack` starts when nothing real is
configured.

- no `AUTH0_DOMAIN`/`AUTH_ISSUER`: the dev authorization server (OIDC discovery, JWKS, demo users, CIBA,
  approval page), with a client secret generated once and kept in the storage folder (with the session
  encryption key, `agentrt.dev_secrets`) and its pending requests kept there too, so a restart loses no
  pending approval;
- no `CHECKOUT_API_URL`: the demo checkout API, trusting whichever issuer is in use;
- no `OPENAI_API_KEY`/`OPENAI_BASE_URL`: the offline OpenAI-compatible model.

They always listen on loopback (the dev approval endpoints have no authentication). `agent_env` is what
the agents and the ingress read, for the Ray job's `runtime_env`: the secrets go there, never to output.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from agentrt.dev_secrets import load_or_create as load_or_create_dev_secrets
from agentrt.ingress.settings import IngressSettings
from agents.settings import ChatSettings
from auth.issuer import issuer_url
from auth.settings import DEFAULT_CHECKOUT_AUDIENCE, AuthConfigError, AuthSettings
from demo.stocks import StockToolSettings
from devservers.server_thread import free_port
from runtime.private_files import private_dir
from runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from devservers.authz_server import DevAuthorizationServer
    from devservers.checkout_api import CheckoutServer
    from devservers.offline_model import OfflineModelServer

SERVICES_HOST = "127.0.0.1"
"""The embedded dev services always listen on loopback (the dev approval endpoints have no authentication)."""
DEV_API_AUDIENCE = "urn:agentrt:api"


class StackError(RuntimeError):
    """The stack could not start (a service did not come up, or the configuration is incomplete)."""


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


def uses_dev_auth(env: Mapping[str, str]) -> bool:
    return not (env.get("AUTH0_DOMAIN") or env.get("AUTH_ISSUER"))


def uses_dev_checkout(env: Mapping[str, str]) -> bool:
    return not env.get("CHECKOUT_API_URL")


def uses_offline_model(env: Mapping[str, str]) -> bool:
    return not (env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"))


def check_external_auth(env: Mapping[str, str]) -> None:
    """A real issuer is configured: the rest of its client configuration must be too."""
    needed = ["AUTH0_CLIENT_ID", "AUTH0_AUDIENCE"]
    if env.get("CIBA_CLIENT_AUTH_METHOD") != "private_key_jwt":
        needed.insert(1, "AUTH0_CLIENT_SECRET")
    missing = [name for name in needed if not env.get(name)]
    if missing:
        raise StackError(
            "AUTH0_DOMAIN/AUTH_ISSUER is set, so the real authorization server is used; also set " + ", ".join(missing)
        )


def port_or_free(preferred: int | None, host: str = SERVICES_HOST) -> int:
    """`preferred` if a server could listen on it on `host` right now, else a free port.

    With `SO_REUSEADDR`, as uvicorn and Serve bind: connections the last run closed linger in TIME_WAIT for
    a minute, and without it a restart would move every embedded service (and the dev issuer's URL)."""
    if preferred:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, preferred))
                return preferred
            except OSError:
                pass
    return free_port(host)


def start_dev_authz(
    storage_dir: Path,
    env: Mapping[str, str],
    *,
    port: int | None,
    users: tuple[str, ...],
    ciba_interval: int | None = None,
) -> DevAuthorizationServer:
    """The dev authorization server, its client credentials, signing key and pending requests kept in
    `storage_dir`, so that a purchase pending when the service stopped can still be approved after."""
    from devservers.authz_server import DevAuthorizationServer

    kept = load_or_create_dev_secrets(storage_dir)
    kwargs: dict[str, Any] = {
        "api_audience": DEV_API_AUDIENCE,
        "host": SERVICES_HOST,
        "port": port_or_free(port, SERVICES_HOST),
        "key_file": storage_dir / "dev-authz-signing-key.pem",
        "clients": {kept.client_id: kept.client_secret},
        "requests_file": storage_dir / "dev-authz-requests.json",
        "users": users,
    }
    if ciba_interval is not None:
        kwargs["default_interval"] = ciba_interval
    if env.get("CIBA_CLIENT_AUTH_METHOD") == "private_key_jwt":
        kwargs["client_keys"] = {kept.client_id: dev_client_public_key(env, kept.client_id)}
    return DevAuthorizationServer(**kwargs).start()


def dev_client_public_key(env: Mapping[str, str], client_id: str) -> bytes:
    """private_key_jwt against the dev server: it registers the public half of the configured key."""
    settings = {k: v for k, v in env.items() if k.startswith("CIBA_")}
    try:
        return AuthSettings(AUTH0_CLIENT_ID=client_id, **settings).require_assertion_signer().public_key_pem()
    except AuthConfigError as exc:
        raise StackError(str(exc)) from None


def start_dev_checkout(
    storage_dir: Path, env: Mapping[str, str], *, issuer: str | None, port: int | None
) -> CheckoutServer:
    """The demo checkout API, trusting `issuer` (the dev server's, else the configured one)."""
    from devservers.checkout_api import CheckoutServer

    private_dir(storage_dir)
    return CheckoutServer(
        issuer=issuer or issuer_url(env.get("AUTH_ISSUER"), env.get("AUTH0_DOMAIN")),
        audience=env.get("CHECKOUT_AUDIENCE") or DEFAULT_CHECKOUT_AUDIENCE,
        db_path=storage_dir / "checkout-orders.sqlite3",
        host=SERVICES_HOST,
        port=port_or_free(port, SERVICES_HOST),
    ).start()


def start_offline_model(*, port: int | None, chunk_delay: float) -> OfflineModelServer:
    from devservers.offline_model import OfflineModelServer

    return OfflineModelServer(
        host=SERVICES_HOST, port=port_or_free(port, SERVICES_HOST), chunk_delay=chunk_delay
    ).start()


def agent_env(
    env: Mapping[str, str],
    storage_dir: Path,
    namespace: str,
    *,
    authz: DevAuthorizationServer | None,
    checkout: CheckoutServer | None,
    model: OfflineModelServer | None,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """Everything the agents and the ingress read, for the Ray job's runtime_env."""
    out = {name: env[name] for name in PASSTHROUGH_ENV if env.get(name)}
    if authz is not None:
        out.update(
            AUTH_ISSUER=authz.issuer,
            AUTH0_CLIENT_ID=authz.client_id,
            AUTH0_CLIENT_SECRET=authz.client_secret,
            AUTH0_AUDIENCE=DEV_API_AUDIENCE,
            AGENTRT_DEV_AUTHZ_URL=authz.url,
        )
        # the dev server pings the API when the user decided (CIBA ping mode), polling stays the fallback
        out.setdefault("CIBA_DELIVERY_MODE", "ping")
        out.pop("AUTH0_DOMAIN", None)
    if not out.get("AUTH0_SESSION_ENCRYPTION_KEY"):  # kept in the storage folder (0600), never printed
        out["AUTH0_SESSION_ENCRYPTION_KEY"] = load_or_create_dev_secrets(storage_dir).encryption_key
    if checkout is not None:
        out["CHECKOUT_API_URL"] = checkout.api_url
        out["CHECKOUT_AUDIENCE"] = checkout.audience
    if model is not None:
        out.update(OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="offline", OPENAI_MODEL=model.model)
    out["AGENT_STORAGE_DIR"] = str(storage_dir.resolve())
    out["AGENT_NAMESPACE"] = namespace
    out.update({k: str(v) for k, v in extra.items()})
    return out
