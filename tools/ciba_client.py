"""An async CIBA (Client-Initiated Backchannel Authentication, poll mode) client on httpx.

Two calls, each mapping the wire protocol onto types so callers never parse OAuth error strings:

- `backchannel_authenticate(...)` starts a request at the provider's `backchannel_authentication_endpoint` and returns a
  `BackchannelResponse`; a refusal raises `CIBAError` (`unknown_user_id`, `invalid_scope`, ...).
- `poll(auth_req_id)` asks the `token_endpoint` once and returns one `PollResult`: `Pending`, `SlowDown`,
  `Approved`, `AccessDenied`, `ExpiredToken` or `InvalidGrant` (CIBA Core 1.0 section 11).

Faults of the network or the server (connection refused, timeouts, 5xx, 429) are retried with exponential
backoff and, if they persist, raise `CIBATransientError`: a provider outage must never look like the user
saying no. Requests are checked before they are sent (`binding_message` against Auth0's rule, exactly one
hint, `openid` in the scope), so a bad request costs no round trip and never reaches the user's phone.

The client secret is used for client authentication only: it is not in any repr, log line or exception.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import httpx
from pydantic import SecretStr

from auth.client_assertion import CLIENT_ASSERTION_TYPE, ClientAssertionSigner
from auth.http_pool import tls_context
from auth.issuer import discovery_url, origin
from tools.ciba_types import (
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

if TYPE_CHECKING:
    from auth.settings import AuthSettings

log = logging.getLogger(__name__)

_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRYABLE_STATUSES_NOT_SENT = frozenset({429, 502, 503, 504})


def _retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response body if it is a JSON object, else None (a provider answering HTML or garbage)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _oauth_error(response: httpx.Response) -> tuple[str | None, str | None]:
    body = _json_object(response)
    if body is None:
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        error if isinstance(error, str) else None,
        description[:300] if isinstance(description, str) else None,
    )


def _scopes(scope: str | Sequence[str]) -> list[str]:
    items = scope.split() if isinstance(scope, str) else [s for part in scope for s in str(part).split()]
    return ["openid"] + [s for s in dict.fromkeys(items) if s != "openid"]


_shared_clients: dict[tuple[str, ...], CIBAClient] = {}


def _checked_request(
    user_id: object,
    binding_message: str,
    requested_expiry: int | None,
    authorization_details: Sequence[Mapping[str, Any]] | None,
) -> str | None:
    """Refuse a request before it is sent (`InvalidBindingMessage`, `CIBAError`); the RAR JSON, if any."""
    validate_binding_message(binding_message)
    if not isinstance(user_id, str) or not user_id.strip():
        raise CIBAError("invalid_request", "a user id is required for the login hint")
    if requested_expiry is not None and (
        isinstance(requested_expiry, bool) or not isinstance(requested_expiry, int) or requested_expiry <= 0
    ):
        raise CIBAError("invalid_request", "requested_expiry must be a positive number of seconds")
    if authorization_details is None:
        return None
    details = list(authorization_details)
    if not all(isinstance(d, Mapping) and isinstance(d.get("type"), str) for d in details):
        raise CIBAError("invalid_request", "each authorization_details entry needs a string 'type'")
    return json.dumps([dict(d) for d in details], separators=(",", ":"))


def _backchannel_response(response: httpx.Response) -> BackchannelResponse:
    """The provider's answer to a backchannel request, or `CIBAError` (a refusal, or a malformed answer)."""
    if response.status_code != 200:
        error, description = _oauth_error(response)
        raise CIBAError(error or "invalid_response", description, response.status_code)
    body = _json_object(response)
    if body is None or not isinstance(body.get("auth_req_id"), str) or not body["auth_req_id"]:
        raise CIBAError("invalid_response", "the backchannel response has no auth_req_id", response.status_code)
    expires_in = body.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise CIBAError("invalid_response", "the backchannel response has no valid expires_in", 200)
    interval = body.get("interval")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        interval = DEFAULT_INTERVAL
    return BackchannelResponse(auth_req_id=body["auth_req_id"], expires_in=int(expires_in), interval=int(interval))


class CIBAClient:
    """A CIBA poll-mode client for one OAuth client of one issuer.

    `auth_method` is how the client authenticates (`client_secret_post` puts id and secret in the form,
    `client_secret_basic` in an HTTP Basic header, RFC 6749 section 2.3.1; `private_key_jwt` signs a fresh
    assertion with `assertion_signer` for every request, RFC 7523, and needs no secret). `login_hint_format` chooses
    Auth0's `{"format":"iss_sub","iss":...,"sub":...}` JSON hint or the plain user id. Pass `http` to share
    an `httpx.AsyncClient`; otherwise one is created on first use (per event loop) and closed by `aclose()`.
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
        self.discovery_ttl = discovery_ttl
        self._shared_http = http
        self._own_http: httpx.AsyncClient | None = None
        self._own_http_loop: asyncio.AbstractEventLoop | None = None
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._discovery_lock: asyncio.Lock | None = None

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
            client = _shared_clients[key] = cls.from_settings(settings)
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

    async def check_client_authentication(self) -> None:
        """Ask the token endpoint about an auth_req_id that cannot exist: `invalid_grant` means the client's
        credentials were accepted; `invalid_client` (a wrong secret or key) raises `CIBAError` at once.
        For a start-up check, so a misconfigured client is an error on the console, not a silent hang."""
        metadata = await self.discover()
        form = {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": "agentrt-configuration-check"}
        headers = self._authenticate(form)
        response = await self._send(
            "client check", "POST", metadata.token_endpoint, form=form, headers=headers, replay_safe=True
        )
        error, description = _oauth_error(response)
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

    async def _send(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        replay_safe: bool,
    ) -> httpx.Response:
        """Send with retries. `replay_safe=False` (a backchannel request) retries only when the request
        certainly did not take effect: the connection failed, or the server answered 429/502/503/504."""
        attempts = max(1, self.retry.attempts)
        last_status: int | None = None
        last_retry_after: float | None = None
        reason = "no attempt"
        for attempt in range(attempts):
            if attempt and form is not None and "client_assertion" in form:
                form = {**form, "client_assertion": self._assertion()}  # a jti is used once, retries too
            try:
                response = await self._http().request(method, url, data=form, headers=headers)
            except _CONNECT_ERRORS as exc:
                reason = type(exc).__name__
            except httpx.TransportError as exc:
                if not replay_safe:
                    raise CIBATransientError(
                        f"{operation} failed after the request was sent ({type(exc).__name__})",
                        maybe_sent=True,
                    ) from None
                reason = type(exc).__name__
            else:
                status = response.status_code
                retryable = status in _RETRYABLE_STATUSES_NOT_SENT or (replay_safe and status >= 500)
                if status == 429 and _oauth_error(response)[0] == "slow_down":
                    retryable = False  # the token endpoint's slow_down, whatever the status it uses
                if not retryable:
                    if status >= 500:
                        raise CIBATransientError(
                            f"{operation} failed with HTTP {status}",
                            status=status,
                            maybe_sent=not replay_safe,
                        )
                    return response
                reason = f"HTTP {status}"
                last_status = status
                last_retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            if attempt + 1 >= attempts:
                break
            delay = self.retry.delay(attempt, last_retry_after)
            log.warning(
                "CIBA %s to %s failed (%s); retry %d/%d in %.2fs",
                operation,
                url,
                reason,
                attempt + 1,
                attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
        raise CIBATransientError(
            f"{operation} failed after {attempts} attempts ({reason})",
            status=last_status,
            retry_after=last_retry_after,
        )

    # -- discovery -----------------------------------------------------------------------------------
    async def discover(self, *, refresh: bool = False) -> ProviderMetadata:
        """The provider's CIBA endpoints from `{issuer}/.well-known/openid-configuration` (cached)."""
        if not refresh and self._metadata is not None and time.monotonic() - self._metadata_at < self.discovery_ttl:
            return self._metadata
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        async with self._discovery_lock:
            if not refresh and self._metadata is not None and time.monotonic() - self._metadata_at < self.discovery_ttl:
                return self._metadata
            url = discovery_url(self.issuer)
            response = await self._send("discovery", "GET", url, replay_safe=True)
            if response.status_code != 200:
                raise CIBAError("invalid_configuration", f"discovery answered HTTP {response.status_code}")
            try:
                document = response.json()
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise CIBAError("invalid_configuration", "the discovery document is not a JSON object")
            issuer = document.get("issuer")
            if not isinstance(issuer, str) or issuer.rstrip("/") != self.issuer.rstrip("/"):
                raise CIBAError("invalid_configuration", "the discovery document names another issuer")
            token_endpoint = document.get("token_endpoint")
            backchannel = document.get("backchannel_authentication_endpoint")
            if not isinstance(token_endpoint, str) or not token_endpoint:
                raise CIBAError("invalid_configuration", "the discovery document has no token_endpoint")
            if not isinstance(backchannel, str) or not backchannel:
                raise CIBAError(
                    "invalid_configuration", "the provider does not advertise CIBA (no backchannel endpoint)"
                )
            for name, endpoint in (("token_endpoint", token_endpoint), ("backchannel endpoint", backchannel)):
                if origin(endpoint) != origin(self.issuer):  # the client secret (or assertion) goes there
                    raise CIBAError(
                        "invalid_configuration", f"the discovery document's {name} is not on the issuer's origin"
                    )
            modes = document.get("backchannel_token_delivery_modes_supported")
            if isinstance(modes, list) and "poll" not in modes:
                raise CIBAError("invalid_configuration", "the provider does not support the CIBA poll mode")
            jwks_uri = document.get("jwks_uri")
            self._metadata = ProviderMetadata(
                issuer=issuer,
                token_endpoint=token_endpoint,
                backchannel_authentication_endpoint=backchannel,
                jwks_uri=jwks_uri if isinstance(jwks_uri, str) else None,
                raw=document,
            )
            self._metadata_at = time.monotonic()
            return self._metadata

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
        details_json = _checked_request(user_id, binding_message, requested_expiry, authorization_details)
        metadata = await self.discover()
        if details_json is not None and not metadata.supports_authorization_details(
            [d["type"] for d in authorization_details or ()]
        ):
            # A provider without RAR: the scope and the binding message still say what is approved.
            log.info("the provider does not support authorization_details; asking with scope and message only")
            details_json = None
        form: dict[str, str] = {
            "scope": " ".join(_scopes(scope)),
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
        response = await self._send(
            "backchannel authentication",
            "POST",
            metadata.backchannel_authentication_endpoint,
            form=form,
            headers=headers,
            replay_safe=False,
        )
        return _backchannel_response(response)

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
        response = await self._send(
            "token poll", "POST", metadata.token_endpoint, form=form, headers=headers, replay_safe=False
        )
        if response.status_code == 200:
            return Approved(self._token_set(response))
        error, description = _oauth_error(response)
        if error == "authorization_pending":
            return Pending(interval=interval)
        if error == "slow_down" or (error is None and response.status_code == 429):
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            return SlowDown(interval=interval + SLOW_DOWN_INCREMENT, retry_after=retry_after)
        if error == "access_denied":
            return AccessDenied(description)
        if error == "expired_token":
            return ExpiredToken(description)
        if error == "invalid_grant":
            return InvalidGrant(description)
        raise CIBAError(error or "invalid_response", description, response.status_code)

    @staticmethod
    def _token_set(response: httpx.Response) -> TokenSet:
        body = _json_object(response)
        if body is None or not isinstance(body.get("access_token"), str) or not body["access_token"]:
            raise CIBAError("invalid_response", "the token response has no access_token", response.status_code)
        token_type = body.get("token_type")
        expires_in = body.get("expires_in")
        scope = body.get("scope")
        details = body.get("authorization_details")
        return TokenSet(
            access_token=body["access_token"],
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
            expires_in=int(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
            else None,
            scope=scope.split() if isinstance(scope, str) else [],
            id_token=body.get("id_token") if isinstance(body.get("id_token"), str) else None,
            refresh_token=body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else None,
            authorization_details=details if isinstance(details, list) else None,
        )


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
