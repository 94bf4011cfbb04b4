"""An async CIBA (Client-Initiated Backchannel Authentication: poll and ping mode) client on httpx.

Two calls, each mapping the wire protocol onto types so callers never parse OAuth error strings:

- `backchannel_authenticate(...)` starts a request at the provider's `backchannel_authentication_endpoint` and returns a
  `BackchannelResponse`; a refusal raises `CIBAError` (`unknown_user_id`, `invalid_scope`, ...).
- `poll(auth_req_id)` asks the `token_endpoint` once and returns one `PollResult`: `Pending`, `SlowDown`,
  `Approved`, `AccessDenied`, `ExpiredToken` or `InvalidGrant` (CIBA Core 1.0 section 11).

Faults of the network or the server (connection refused, timeouts, 5xx, 429) are retried with exponential
backoff and, if they persist, raise `CIBATransientError`: a provider outage must never look like the user
saying no (`tools.ciba.sender`). Requests are checked before they are sent (`binding_message` against
Auth0's rule, exactly one hint, `openid` in the scope), so a bad request costs no round trip and never
reaches the user's phone; answers are parsed into types by `tools.ciba.wire`.

The client secret is used for client authentication only: it is not in any repr, log line or exception.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import httpx
from pydantic import SecretStr

from auth.client_assertion import CLIENT_ASSERTION_TYPE, ClientAssertionSigner
from auth.discovery import DiscoveryCache, process_discovery
from auth.http_pool import tls_context
from auth.issuer import discovery_url
from tools.ciba.sender import RetryingSender
from tools.ciba.types import (
    BINDING_MESSAGE_RE,
    CIBA_GRANT_TYPE,
    DEFAULT_INTERVAL,
    SLOW_DOWN_INCREMENT,
    AccessDenied,
    Approved,
    BackchannelResponse,
    CIBAError,
    CIBATransientError,
    ClientAuthMethod,
    ExpiredToken,
    InvalidBindingMessage,
    InvalidGrant,
    LoginHintFormat,
    Pending,
    PollResult,
    ProviderMetadata,
    RetryPolicy,
    SlowDown,
    TokenSet,
    validate_binding_message,
)
from tools.ciba.wire import (
    backchannel_response,
    checked_request,
    json_object,
    oauth_error,
    poll_outcome,
    provider_metadata,
    scopes_with_openid,
)

if TYPE_CHECKING:
    from auth.settings import AuthSettings

log = logging.getLogger(__name__)

_shared_clients: dict[tuple[str, ...], CIBAClient] = {}


class CIBAClient:
    """A CIBA poll-mode client for one OAuth client of one issuer.

    `auth_method` is how the client authenticates (`client_secret_post` puts id and secret in the form,
    `client_secret_basic` in an HTTP Basic header, RFC 6749 section 2.3.1; `private_key_jwt` signs a fresh
    assertion with `assertion_signer` for every request, RFC 7523, and needs no secret). `login_hint_format` chooses
    Auth0's `{"format":"iss_sub","iss":...,"sub":...}` JSON hint or the plain user id. Pass `http` to share
    an `httpx.AsyncClient`; otherwise one is created on first use (per event loop) and closed by `aclose()`.
    Pass `discovery` to share discovery documents with other consumers (its own ttl then applies, not
    `discovery_ttl`); by default the client keeps its own.
    """

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | SecretStr | None = None,
        auth_method: ClientAuthMethod = "client_secret_post",
        assertion_signer: ClientAssertionSigner | None = None,
        login_hint_format: LoginHintFormat = "iss_sub",
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        discovery_ttl: float = 3600.0,
        http: httpx.AsyncClient | None = None,
        discovery: DiscoveryCache | None = None,
    ) -> None:
        if auth_method not in ("client_secret_post", "client_secret_basic", "private_key_jwt"):
            raise ValueError(f"unsupported client auth method {auth_method!r}")
        if auth_method == "private_key_jwt" and assertion_signer is None:
            raise ValueError("private_key_jwt needs an assertion_signer")
        if login_hint_format not in ("iss_sub", "plain"):
            raise ValueError(f"unsupported login hint format {login_hint_format!r}")
        if not client_id:
            raise ValueError("client_id is required")
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret or "")
        if auth_method != "private_key_jwt" and not self._client_secret.get_secret_value():
            raise ValueError("client_secret is required")
        self._signer = assertion_signer
        self.auth_method: ClientAuthMethod = auth_method
        self.login_hint_format: LoginHintFormat = login_hint_format
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._shared_http = http
        self._own_http: httpx.AsyncClient | None = None
        self._own_http_loop: asyncio.AbstractEventLoop | None = None
        self._discovery = discovery or DiscoveryCache(discovery_ttl)
        self._metadata: ProviderMetadata | None = None
        self._metadata_document: dict[str, Any] | None = None
        self._discovery_lock: asyncio.Lock | None = None
        self._sender = RetryingSender(self._http, self.retry, self._fresh_assertion if assertion_signer else None)

    @classmethod
    def from_settings(cls, settings: AuthSettings, **kwargs: Any) -> CIBAClient:
        """A client configured from `AUTH0_*` / `AUTH_ISSUER` / `CIBA_*` (raises `AuthConfigError`)."""
        private_key = not settings.uses_client_secret
        return cls(
            issuer=settings.issuer,
            client_id=settings.require_client_id(),
            client_secret=None if private_key else settings.require_client_secret(),
            assertion_signer=settings.require_assertion_signer() if private_key else None,
            auth_method=settings.ciba_client_auth_method,
            login_hint_format=settings.ciba_login_hint_format,
            **kwargs,
        )

    @classmethod
    def shared(cls, settings: AuthSettings) -> CIBAClient:
        """The process's one client for these settings: discovery is fetched once per process, not once
        per agent activation, and its connections are pooled across the agents of a host."""
        if settings.uses_client_secret:
            credential = settings.require_client_secret().get_secret_value()
        else:
            credential = repr((settings.ciba_client_assertion_key_file, settings.ciba_client_assertion_kid))
            if settings.ciba_client_assertion_key is not None:
                credential += hashlib.sha256(settings.ciba_client_assertion_key.get_secret_value().encode()).hexdigest()
        key = (
            settings.issuer,
            settings.require_client_id(),
            credential,
            settings.ciba_client_auth_method,
            settings.ciba_login_hint_format,
        )
        client = _shared_clients.get(key)
        if client is None:
            client = _shared_clients[key] = cls.from_settings(settings, discovery=process_discovery())
        return client

    def __repr__(self) -> str:
        return f"CIBAClient(issuer={self.issuer!r}, client_id={self.client_id!r}, auth={self.auth_method})"

    @property
    def max_request_seconds(self) -> float:
        """An upper bound on how long one `backchannel_authenticate()`/`poll()` call may take, retries included."""
        return self.retry.attempts * self.timeout + self.retry.total_delay()

    # -- plumbing ------------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._shared_http is not None:
            return self._shared_http
        loop = asyncio.get_running_loop()
        if self._own_http is None or self._own_http_loop is not loop or self._own_http.is_closed:
            # An httpx client's connections belong to one event loop; a new loop gets a new client.
            self._own_http = httpx.AsyncClient(
                timeout=self.timeout, headers={"Accept": "application/json"}, verify=tls_context()
            )
            self._own_http_loop = loop
        return self._own_http

    async def aclose(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    async def __aenter__(self) -> CIBAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _assertion(self) -> str:
        assert self._signer is not None
        return self._signer.assertion(audience=self.issuer)

    def _fresh_assertion(self, form: dict[str, str]) -> dict[str, str]:
        """`form` with a new assertion for a retry (an assertion's `jti` is used once)."""
        return {**form, "client_assertion": self._assertion()} if "client_assertion" in form else form

    async def check_client_authentication(self) -> None:
        """Ask the token endpoint about an auth_req_id that cannot exist: `invalid_grant` means the client's
        credentials were accepted; `invalid_client` (a wrong secret or key) raises `CIBAError` at once.
        For a start-up check, so a misconfigured client is an error on the console, not a silent hang."""
        metadata = await self.discover()
        form = {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": "agentrt-configuration-check"}
        headers = self._authenticate(form)
        response = await self._sender.send(
            "client check", "POST", metadata.token_endpoint, form=form, headers=headers, replay_safe=True
        )
        error, description = oauth_error(response)
        if error in ("invalid_client", "unauthorized_client"):
            raise CIBAError(error, description, status=response.status_code)

    def _authenticate(self, form: dict[str, str]) -> dict[str, str]:
        """Add client authentication to `form` or to the returned headers."""
        if self.auth_method == "private_key_jwt":
            form["client_id"] = self.client_id
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = self._assertion()
            return {}
        secret = self._client_secret.get_secret_value()
        if self.auth_method == "client_secret_post":
            form["client_id"] = self.client_id
            form["client_secret"] = secret
            return {}
        raw = f"{quote_plus(self.client_id)}:{quote_plus(secret)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}

    # -- discovery -----------------------------------------------------------------------------------
    async def discover(self, *, refresh: bool = False) -> ProviderMetadata:
        """The provider's CIBA endpoints from `{issuer}/.well-known/openid-configuration` (cached, and
        shared with the process's other consumers when the client was given `process_discovery()`)."""
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        async with self._discovery_lock:
            document = await self._discovery.document(self.issuer, self._fetch_discovery, refresh=refresh)
            if self._metadata is None or document is not self._metadata_document:
                self._metadata = provider_metadata(document, self.issuer)
                self._metadata_document = document
            return self._metadata

    async def _fetch_discovery(self) -> dict[str, Any]:
        response = await self._sender.send("discovery", "GET", discovery_url(self.issuer), replay_safe=True)
        if response.status_code != 200:
            raise CIBAError("invalid_configuration", f"discovery answered HTTP {response.status_code}")
        document = json_object(response)
        if document is None:
            raise CIBAError("invalid_configuration", "the discovery document is not a JSON object")
        provider_metadata(document, self.issuer)  # a document this client refuses is not remembered
        return document

    # -- CIBA ----------------------------------------------------------------------------------------
    def login_hint(self, user_id: str, issuer: str) -> str:
        """The `login_hint` for `user_id` in the configured format."""
        if self.login_hint_format == "plain":
            return user_id
        return json.dumps({"format": "iss_sub", "iss": issuer, "sub": user_id}, separators=(",", ":"))

    async def backchannel_authenticate(
        self,
        user_id: str,
        scope: str | Sequence[str],
        binding_message: str,
        audience: str | None = None,
        requested_expiry: int | None = None,
        authorization_details: Sequence[Mapping[str, Any]] | None = None,
        client_notification_token: str | None = None,
    ) -> BackchannelResponse:
        """Start a backchannel authentication request for `user_id` (Auth0: the user's `sub`).

        `openid` is always added to `scope`. Raises `InvalidBindingMessage` (nothing sent), `CIBAError` for
        the server's refusals, `CIBATransientError` when the server stays unreachable.
        """
        details_json = checked_request(user_id, binding_message, requested_expiry, authorization_details)
        metadata = await self.discover()
        if details_json is not None and not metadata.supports_authorization_details(
            [d["type"] for d in authorization_details or ()]
        ):
            # A provider without RAR: the scope and the binding message still say what is approved.
            log.info("the provider does not support authorization_details; asking with scope and message only")
            details_json = None
        form: dict[str, str] = {
            "scope": " ".join(scopes_with_openid(scope)),
            "login_hint": self.login_hint(user_id, metadata.issuer),
            "binding_message": binding_message,
        }
        if audience:
            form["audience"] = audience
        if requested_expiry is not None:
            form["requested_expiry"] = str(requested_expiry)
        if details_json is not None:
            form["authorization_details"] = details_json
        if client_notification_token:  # ping mode: the provider calls us back with it (CIBA 10.2)
            form["client_notification_token"] = client_notification_token
        headers = self._authenticate(form)
        response = await self._sender.send(
            "backchannel authentication",
            "POST",
            metadata.backchannel_authentication_endpoint,
            form=form,
            headers=headers,
            replay_safe=False,
        )
        return backchannel_response(response)

    async def poll(self, auth_req_id: str, *, interval: int = DEFAULT_INTERVAL) -> PollResult:
        """Ask the token endpoint once whether `auth_req_id` was approved.

        `interval` is the polling interval in force; a `SlowDown` result carries it increased by 5 s.
        Client errors other than the CIBA outcomes (`invalid_client`, `unauthorized_client`,
        `invalid_request`, ...) raise `CIBAError`; outages raise `CIBATransientError`.
        """
        metadata = await self.discover()
        form = {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": auth_req_id}
        headers = self._authenticate(form)
        # not replay-safe: a poll whose answer is lost may have received the tokens, and the server then
        # spends the request; the caller learns of it (`maybe_sent`) and decides (see async_confirmation)
        response = await self._sender.send(
            "token poll", "POST", metadata.token_endpoint, form=form, headers=headers, replay_safe=False
        )
        return poll_outcome(response, interval)


__all__ = [
    "AccessDenied",
    "Approved",
    "BackchannelResponse",
    "BINDING_MESSAGE_RE",
    "CIBA_GRANT_TYPE",
    "CIBAClient",
    "CIBAError",
    "CIBATransientError",
    "DEFAULT_INTERVAL",
    "ExpiredToken",
    "InvalidBindingMessage",
    "InvalidGrant",
    "Pending",
    "PollResult",
    "ProviderMetadata",
    "RetryPolicy",
    "SLOW_DOWN_INCREMENT",
    "SlowDown",
    "TokenSet",
    "validate_binding_message",
]
