"""The embedded dev authorization server: OIDC discovery, JWKS, dev login and CIBA (poll mode).

It plays Auth0 for local runs and tests, and is strict on purpose: a client that passes against it should
pass against Auth0. Requests follow CIBA Core 1.0 and Auth0's rules (client authentication by
`client_secret_post` or `client_secret_basic`, exactly one hint, `openid` in the scope, Auth0's binding
message rule, `requested_expiry`, `audience`, RAR `authorization_details`), and polling is policed:
polling faster than the interval answers `slow_down` and adds 5 s to that request's interval, and an
`auth_req_id` is single use.

It also plays the user's phone: `GET /approvals` is a page listing the waiting requests with Approve and
Deny buttons, and `/dev/ciba/requests` is the same as JSON for tests, the CLI and the benchmark. Those
endpoints have no authentication, which is why the server refuses to listen beyond loopback.

    server = DevAuthorizationServer(api_audience="https://agents.test/api").start()
    server.issuer       # "http://127.0.0.1:PORT/"  (Auth0 style: trailing slash)
    server.client_id, server.client_secret   # generated unless given; never printed
    ...
    server.stop()

All state lives in one `AuthzState`, so a test can stop the HTTP server and start a new one on the same
port with the same state (an outage without losing the requests or the signing key).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import html
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from auth.client_assertion import CLIENT_ASSERTION_TYPE
from auth.http_pool import tls_context
from auth.issuer import is_loopback_host
from devservers.faults import Stall, Stalling
from devservers.local_only import LocalOnly
from devservers.server_thread import ServerThread, free_port
from tools.ciba_types import BINDING_MESSAGE_RE

log = logging.getLogger(__name__)

CIBA_GRANT_TYPE = "urn:openid:params:grant-type:ciba"
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
SLOW_DOWN_INCREMENT = 5
USER_PREFIX = "auth0|"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

RequestStatus = Literal["pending", "approved", "denied", "expired"]
STATUSES: tuple[str, ...] = ("pending", "approved", "denied", "expired")


# ---------------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class SigningKey:
    """An RSA key signing the server's tokens; `kid` is its RFC 7638 thumbprint, stable across restarts."""

    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        """Load the PEM at `path`; if there is none, generate a key and write it there (mode 0600)."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{path} does not hold an RSA private key")
            return cls(key)
        created = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = created.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with open(path, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as handle:
            handle.write(pem)
        return created

    @cached_property
    def public_jwk(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {"kty": "RSA", "n": jwk["n"], "e": jwk["e"], "kid": self.kid, "use": "sig", "alg": "RS256"}

    @cached_property
    def kid(self) -> str:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")[:16]

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.private_key, algorithm="RS256", headers={"kid": self.kid})


# ---------------------------------------------------------------------------------------------------
# State


class OAuthError(Exception):
    """An OAuth error response: `{"error", "error_description"}` with `status` and optional headers."""

    def __init__(
        self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers={**NO_STORE, **self.headers},
        )


@dataclass
class CIBARequest:
    """One backchannel authentication request, as the server remembers it."""

    id: str
    auth_req_id: str = field(repr=False)
    client_id: str
    sub: str
    username: str
    scopes: list[str]
    audience: str
    binding_message: str
    authorization_details: list[dict[str, Any]] | None
    created_at: float
    expires_at: float
    interval: int
    status: RequestStatus = "pending"
    decided_at: float | None = None
    finished: bool = False
    """A final answer (tokens, denial, expiry) was delivered: the auth_req_id is spent."""
    last_poll: float | None = None
    polls: int = 0
    client_notification_token: str | None = field(default=None, repr=False)
    """Ping mode: the bearer token the server sends to the client's notification endpoint."""

    def current_status(self, now: float) -> RequestStatus:
        if self.status == "pending" and now >= self.expires_at:
            return "expired"
        return self.status

    def public(self, now: float) -> dict[str, Any]:
        """What the phone, the CLI and tests see: never the auth_req_id."""
        return {
            "id": self.id,
            "user": self.username,
            "sub": self.sub,
            "binding_message": self.binding_message,
            "scope": " ".join(self.scopes),
            "audience": self.audience,
            "authorization_details": self.authorization_details,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_at": self.decided_at,
            "status": self.current_status(now),
            "finished": self.finished,
            "interval": self.interval,
            "polls": self.polls,
        }


ENDPOINT_PATHS: dict[str, dict[str, str]] = {
    "auth0": {"jwks": ".well-known/jwks.json", "token": "oauth/token", "backchannel": "bc-authorize"},
    "generic": {"jwks": "jwks", "token": "oauth2/token", "backchannel": "oauth2/bc-authorize"},
}
"""Where the server puts its endpoints: Auth0's paths, or other ones, to prove that clients take every
endpoint from discovery (an OpenID provider may put them anywhere)."""


@dataclass
class AuthzState:
    """Everything the server knows; shared by restarts of its HTTP front. Thread-safe (one lock)."""

    issuer: str
    api_audience: str
    clients: dict[str, str] = field(repr=False)
    users: dict[str, str]
    """username -> sub"""
    signing_key: SigningKey = field(repr=False)
    default_interval: int = 5
    default_expiry: int = 300
    max_requested_expiry: int = 300
    access_token_lifetime: int = 600
    login_token_lifetime: int = 3600
    expired_error: Literal["expired_token", "access_denied"] = "expired_token"
    """What polling an expired request answers: the spec's `expired_token`, or Auth0's `access_denied`."""
    poll_tolerance: float = 0.05
    """Seconds a poll may come early (timer jitter) before it counts as too fast."""
    ciba_disabled_clients: frozenset[str] = frozenset()
    """Clients without the CIBA grant: they get `unauthorized_client`."""
    users_without_push: frozenset[str] = frozenset()
    """Users (username or sub) with no device enrolled: their requests are refused."""
    requests: dict[str, CIBARequest] = field(default_factory=dict, repr=False)
    by_auth_req_id: dict[str, str] = field(default_factory=dict, repr=False)
    endpoint_paths: Literal["auth0", "generic"] = "auth0"
    authorization_details_supported: bool = True
    """RAR: advertise `authorization_details_types_supported` and put the details in the token; False plays a
    provider without RAR (it ignores the parameter)."""
    notification_endpoints: dict[str, str] = field(default_factory=dict)
    """Ping mode (CIBA 10.2): client id -> its `backchannel_client_notification_endpoint`."""
    drop_pings: bool = False
    """Lose every ping (a test hook: the client must still complete by polling)."""
    stall: Stall = field(default_factory=Stall, repr=False)
    """Hold every request while stalled (`DevAuthorizationServer.stall`): an unresponsive provider."""
    pings_sent: int = 0
    client_keys: dict[str, Any] = field(default_factory=dict, repr=False)
    """private_key_jwt clients: client id -> public key (PEM bytes or a key object)."""
    seen_assertions: dict[str, float] = field(default_factory=dict, repr=False)
    requests_file: Path | None = None
    """Where the requests are kept (JSON, mode 0600) so that a restart forgets none; None: memory only."""
    backchannel_requests: int = 0
    token_requests: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- users and clients ---------------------------------------------------------------------------
    def user_by_any(self, value: str) -> tuple[str, str] | None:
        """(username, sub) for a username or a sub."""
        if value in self.users:
            return value, self.users[value]
        for username, sub in self.users.items():
            if sub == value:
                return username, sub
        return None

    def check_client_assertion(self, form: Mapping[str, str]) -> str:
        """private_key_jwt (RFC 7523 2.2): the assertion is signed by the client's registered key, names the
        client as `iss` and `sub`, this server as `aud`, is unexpired, and its `jti` was never seen."""
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE or not form.get("client_assertion"):
            raise OAuthError("invalid_client", "unsupported client assertion", 401)
        assertion = form["client_assertion"]
        try:
            claimed = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", "the client assertion is not a JWT", 401) from None
        client_id = form.get("client_id") or claimed
        key = self.client_keys.get(str(client_id))
        if key is None or claimed != client_id:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        paths = ENDPOINT_PATHS[self.endpoint_paths]
        audiences = [self.issuer, self.issuer + paths["token"], self.issuer + paths["backchannel"]]
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256", "ES256"],
                audience=audiences,
                leeway=5,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", "client authentication failed", 401) from None
        if claims["sub"] != client_id:
            raise OAuthError("invalid_client", "client authentication failed", 401)
        now = time.time()
        with self.lock:
            self.seen_assertions = {jti: exp for jti, exp in self.seen_assertions.items() if exp > now}
            if claims["jti"] in self.seen_assertions:
                raise OAuthError("invalid_client", "the client assertion was already used", 401)
            self.seen_assertions[claims["jti"]] = float(claims["exp"]) + 5
        return str(client_id)

    def check_client(self, client_id: str, secret: str) -> bool:
        expected = self.clients.get(client_id)
        # Compare against something even for an unknown client, so timing does not reveal valid ids.
        ok = hmac.compare_digest((expected or secrets.token_hex(16)).encode(), secret.encode())
        return expected is not None and ok

    # -- persistence ---------------------------------------------------------------------------------
    def load_requests(self) -> int:
        """Read the requests a previous run kept in `requests_file`; returns how many."""
        if self.requests_file is None or not self.requests_file.exists():
            return 0
        try:
            rows = json.loads(self.requests_file.read_text())
            loaded = [CIBARequest(**{**row, "last_poll": None}) for row in rows]
        except (OSError, ValueError, TypeError) as exc:
            log.warning("could not read the kept CIBA requests (%s); starting without them", type(exc).__name__)
            return 0
        with self.lock:
            for request in loaded:
                self.requests[request.id] = request
                self.by_auth_req_id[request.auth_req_id] = request.id
        return len(loaded)

    def save_requests(self) -> None:
        """Write every request to `requests_file` (atomically, readable by this user only)."""
        if self.requests_file is None:
            return
        with self.lock:
            rows = [dataclasses.asdict(r) for r in self.requests.values()]
            temporary = self.requests_file.with_name(self.requests_file.name + ".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(rows, out)
            os.replace(temporary, self.requests_file)

    # -- CIBA ----------------------------------------------------------------------------------------
    def create_request(
        self,
        *,
        client_id: str,
        username: str,
        sub: str,
        scopes: list[str],
        audience: str,
        binding_message: str,
        authorization_details: list[dict[str, Any]] | None,
        expires_in: int,
        client_notification_token: str | None = None,
    ) -> CIBARequest:
        now = time.time()
        request = CIBARequest(
            id="req_" + secrets.token_hex(8),
            auth_req_id=secrets.token_urlsafe(32),
            client_id=client_id,
            sub=sub,
            username=username,
            scopes=scopes,
            audience=audience,
            binding_message=binding_message,
            authorization_details=authorization_details,
            created_at=now,
            expires_at=now + expires_in,
            interval=self.default_interval,
            client_notification_token=client_notification_token,
        )
        with self.lock:
            self.requests[request.id] = request
            self.by_auth_req_id[request.auth_req_id] = request.id
            self._forget_old(now)
            self.save_requests()
        return request

    def _forget_old(self, now: float, keep_for: float = 3600.0) -> None:
        stale = [
            r.id
            for r in self.requests.values()
            if r.current_status(now) != "pending" and now - max(r.expires_at, r.decided_at or 0.0) > keep_for
        ]
        for request_id in stale:
            request = self.requests.pop(request_id)
            self.by_auth_req_id.pop(request.auth_req_id, None)

    def list_requests(self, user: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        now = time.time()
        with self.lock:
            rows = list(self.requests.values())
        if user:
            found = self.user_by_any(user)
            rows = [r for r in rows if found is not None and r.sub == found[1]]
        if status:
            rows = [r for r in rows if r.current_status(now) == status]
        return [r.public(now) for r in sorted(rows, key=lambda r: r.created_at)]

    def decide(self, request_id: str, approve: bool) -> dict[str, Any]:
        """Approve or deny as the user would on their phone. Repeating the same decision is a no-op."""
        wanted: RequestStatus = "approved" if approve else "denied"
        now = time.time()
        with self.lock:
            request = self.requests.get(request_id)
            if request is None:
                raise LookupError(request_id)
            status = request.current_status(now)
            decided = status == "pending"
            if decided:
                request.status = wanted
                request.decided_at = now
                self.save_requests()
            elif status != wanted:
                raise ValueError(f"the request is already {status}")
            public = request.public(now)
        if decided:
            self._ping(request)
        return public

    def _ping(self, request: CIBARequest) -> None:
        """Ping mode: tell the client the result is ready (a POST with the request's token, off the caller's
        thread). The client then fetches it at the token endpoint."""
        endpoint = self.notification_endpoints.get(request.client_id)
        if not endpoint or not request.client_notification_token or self.drop_pings:
            return
        with self.lock:
            self.pings_sent += 1

        def send() -> None:
            try:
                httpx.post(
                    endpoint,
                    verify=tls_context(),  # a new TLS context per ping would cost ~20 ms of the approval
                    json={"auth_req_id": request.auth_req_id},
                    headers={"Authorization": f"Bearer {request.client_notification_token}"},
                    timeout=10.0,
                )
            except httpx.HTTPError as exc:
                log.warning("ping to %s failed: %s", endpoint, type(exc).__name__)

        threading.Thread(target=send, name=f"ciba-ping-{request.id}", daemon=True).start()

    def poll(self, client_id: str, auth_req_id: str) -> dict[str, Any]:
        """The token endpoint's CIBA grant: tokens, or an `OAuthError` (pending, slow_down, ...)."""
        try:
            return self._poll(client_id, auth_req_id)
        finally:
            self.save_requests()  # a spent auth_req_id, a new interval: a restart must know them

    def _poll(self, client_id: str, auth_req_id: str) -> dict[str, Any]:
        now, mono = time.time(), time.monotonic()
        with self.lock:
            request_id = self.by_auth_req_id.get(auth_req_id)
            request = self.requests.get(request_id) if request_id else None
            if request is None or request.client_id != client_id:
                raise OAuthError("invalid_grant", "unknown auth_req_id")
            request.polls += 1
            if request.finished:
                raise OAuthError("invalid_grant", "the auth_req_id was already used")
            status = request.current_status(now)
            if status == "approved":
                request.finished = True
                return self._issue_tokens(request, now)
            if status == "denied":
                request.finished = True
                raise OAuthError("access_denied", "the user denied the request")
            if status == "expired":
                request.finished = True
                raise OAuthError(self.expired_error, "the authorization request expired")
            too_fast = (
                request.last_poll is not None and mono - request.last_poll < request.interval - self.poll_tolerance
            )
            request.last_poll = mono
            if too_fast:
                request.interval += SLOW_DOWN_INCREMENT
                raise OAuthError(
                    "slow_down",
                    f"polling too fast; the interval is now {request.interval} s",
                    headers={"Retry-After": str(request.interval)},
                )
            raise OAuthError("authorization_pending", "the user has not answered yet")

    def _issue_tokens(self, request: CIBARequest, now: float) -> dict[str, Any]:
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": request.sub,
            "aud": request.audience,
            "azp": request.client_id,
            "scope": " ".join(request.scopes),
            "iat": iat,
            "exp": iat + self.access_token_lifetime,
            "jti": uuid.uuid4().hex,
        }
        if request.authorization_details is not None:
            claims["authorization_details"] = request.authorization_details
        body: dict[str, Any] = {
            "access_token": self.signing_key.sign(claims),
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "scope": " ".join(request.scopes),
        }
        if "openid" in request.scopes:
            body["id_token"] = self.signing_key.sign(
                {
                    "iss": self.issuer,
                    "sub": request.sub,
                    "aud": request.client_id,
                    "iat": iat,
                    "exp": iat + self.access_token_lifetime,
                    "auth_time": int(request.decided_at or now),
                }
            )
        if "offline_access" in request.scopes:
            body["refresh_token"] = secrets.token_urlsafe(32)
        if request.authorization_details is not None:
            body["authorization_details"] = request.authorization_details
        return body

    def login_token(self, username: str) -> dict[str, Any]:
        """A user access token for the API audience (what a browser login would give the chat page)."""
        found = self.user_by_any(username)
        if found is None:
            raise LookupError(username)
        name, sub = found
        iat = int(time.time())
        token = self.signing_key.sign(
            {
                "iss": self.issuer,
                "sub": sub,
                "aud": self.api_audience,
                "scope": "openid profile",
                "iat": iat,
                "exp": iat + self.login_token_lifetime,
                "name": name,
                "jti": uuid.uuid4().hex,
            }
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.login_token_lifetime,
            "sub": sub,
            "username": name,
        }

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "backchannel_requests": self.backchannel_requests,
                "token_requests": self.token_requests,
                "pings_sent": self.pings_sent,
                "polls_by_request": {r.id: r.polls for r in self.requests.values()},
            }


def create_state(
    *,
    issuer: str,
    api_audience: str,
    clients: Mapping[str, str] | None = None,
    users: Iterable[str] = ("alice", "bob"),
    key_file: Path | str | None = None,
    **options: Any,
) -> AuthzState:
    """A fresh `AuthzState`: one generated client unless `clients` is given, users `auth0|<name>`."""
    if not issuer.endswith("/"):
        raise ValueError("the issuer must end with '/', as Auth0's does")
    client_map = (
        dict(clients) if clients is not None else {"dev-agent-" + secrets.token_hex(6): secrets.token_urlsafe(32)}
    )
    key = SigningKey.from_file(Path(key_file)) if key_file is not None else SigningKey.generate()
    state = AuthzState(
        issuer=issuer,
        api_audience=api_audience,
        clients=client_map,
        users={name: USER_PREFIX + name for name in users},
        signing_key=key,
        **options,
    )
    state.load_requests()
    return state


# ---------------------------------------------------------------------------------------------------
# HTTP


async def _read_form(request: Request) -> dict[str, str]:
    """The urlencoded body, refusing repeated parameters (RFC 6749 section 3.1) and other encodings."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not valid form data") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"the parameter {name} is repeated")
        form[name] = value
    return form


def _authenticate_client(state: AuthzState, request: Request, form: dict[str, str]) -> str:
    """The authenticated client id (`client_secret_basic`, `client_secret_post` or `private_key_jwt`, one)."""
    if "client_assertion" in form or "client_assertion_type" in form:
        if request.headers.get("authorization") is not None or "client_secret" in form:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        return state.check_client_assertion(form)
    header = request.headers.get("authorization")
    basic_challenge = {"WWW-Authenticate": 'Basic realm="dev-authz"'}
    if header is not None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "unsupported client authentication", 401, basic_challenge)
        if "client_secret" in form:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        try:
            raw_id, sep, raw_secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed Basic credentials", 401, basic_challenge) from None
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if not sep or ("client_id" in form and form["client_id"] != client_id):
            raise OAuthError("invalid_client", "malformed Basic credentials", 401, basic_challenge)
        if not state.check_client(client_id, secret):
            raise OAuthError("invalid_client", "client authentication failed", 401, basic_challenge)
        return client_id
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        raise OAuthError("invalid_client", "client authentication is required", 401)
    if not state.check_client(client_id, secret):
        raise OAuthError("invalid_client", "client authentication failed", 401)
    return client_id


def _resolve_hint(state: AuthzState, form: dict[str, str]) -> tuple[str, str]:
    """(username, sub) of the user the request is for; exactly one hint is allowed (CIBA 7.1)."""
    hints = [name for name in ("login_hint", "id_token_hint", "login_hint_token") if form.get(name)]
    if len(hints) != 1:
        raise OAuthError("invalid_request", "exactly one of login_hint, id_token_hint, login_hint_token is required")
    name = hints[0]
    value = form[name]
    subject: str | None
    if name == "login_hint_token":
        raise OAuthError("invalid_request", "login_hint_token is not supported")
    if name == "id_token_hint":
        try:
            claims = jwt.decode(
                value,
                state.signing_key.private_key.public_key(),
                algorithms=["RS256"],
                issuer=state.issuer,
                options={"verify_aud": False, "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise OAuthError("invalid_request", "id_token_hint is not an ID token of this issuer") from None
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    elif value.lstrip().startswith("{"):
        try:
            hint = json.loads(value)
        except ValueError:
            raise OAuthError("invalid_request", "login_hint is not valid JSON") from None
        if not isinstance(hint, dict) or hint.get("format") != "iss_sub":
            raise OAuthError("invalid_request", "login_hint must use the iss_sub format")
        if hint.get("iss") != state.issuer:
            raise OAuthError("invalid_request", "login_hint names another issuer")
        subject = hint.get("sub") if isinstance(hint.get("sub"), str) else None
    else:
        subject = value
    found = state.user_by_any(subject) if subject else None
    if found is None:
        raise OAuthError("unknown_user_id", "the user is unknown")
    return found


def _parse_authorization_details(raw: str | None) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    try:
        details = json.loads(raw)
    except ValueError:
        raise OAuthError("invalid_authorization_details", "authorization_details is not valid JSON") from None
    if not isinstance(details, list) or not details:
        raise OAuthError("invalid_authorization_details", "authorization_details must be a non-empty JSON array")
    for entry in details:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or not entry["type"]:
            raise OAuthError("invalid_authorization_details", "each authorization_details entry needs a type")
    return details


def create_authz_app(
    *,
    issuer: str | None = None,
    clients: dict[str, str] | None = None,
    users: Iterable[str] = ("alice", "bob"),
    api_audience: str | None = None,
    key_file: Path | None = None,
    state: AuthzState | None = None,
    **options: Any,
) -> Starlette:
    """The server as an ASGI app. Pass `state` to serve existing state (a restart), or the settings
    (`issuer`, `api_audience`, ...; `options` are `AuthzState` fields such as `default_interval`)."""
    if state is None:
        if issuer is None or api_audience is None:
            raise ValueError("create_authz_app needs `state`, or `issuer` and `api_audience`")
        state = create_state(
            issuer=issuer,
            api_audience=api_audience,
            clients=clients,
            users=users,
            key_file=key_file,
            **options,
        )
    st = state

    paths = ENDPOINT_PATHS[st.endpoint_paths]

    async def discovery(_: Request) -> JSONResponse:
        base = st.issuer
        return JSONResponse(
            {
                "issuer": base,
                "jwks_uri": base + paths["jwks"],
                "token_endpoint": base + paths["token"],
                "backchannel_authentication_endpoint": base + paths["backchannel"],
                "grant_types_supported": [CIBA_GRANT_TYPE],
                "backchannel_token_delivery_modes_supported": ["poll", "ping"],
                "backchannel_user_code_parameter_supported": False,
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "client_secret_basic",
                    "private_key_jwt",
                ],
                "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
                "response_types_supported": ["token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "dev_login_endpoint": base + "dev/login",
                "dev_approvals_page": base + "approvals",
                **({"authorization_details_types_supported": ["*"]} if st.authorization_details_supported else {}),
            }
        )

    async def jwks(_: Request) -> JSONResponse:
        return JSONResponse({"keys": [st.signing_key.public_jwk]})

    async def bc_authorize(request: Request) -> Response:
        with st.lock:
            st.backchannel_requests += 1
        try:
            form = await _read_form(request)
            client_id = _authenticate_client(st, request, form)
            if client_id in st.ciba_disabled_clients:
                raise OAuthError("unauthorized_client", "the client may not use CIBA")
            scopes = form.get("scope", "").split()
            if not all(SCOPE_TOKEN_RE.fullmatch(s) for s in scopes):
                raise OAuthError("invalid_scope", "the scope is malformed")
            if "openid" not in scopes:
                raise OAuthError("invalid_scope", "the scope must include openid")
            scopes = list(dict.fromkeys(scopes))
            username, sub = _resolve_hint(st, form)
            binding = form.get("binding_message")
            if binding is None:
                raise OAuthError("invalid_request", "binding_message is required")
            if not BINDING_MESSAGE_RE.fullmatch(binding) or not binding.strip():
                raise OAuthError(
                    "invalid_binding_message",
                    "binding_message must be 1-64 letters, digits, spaces or +-_.,:#",
                )
            expiry_raw = form.get("requested_expiry")
            expires_in = st.default_expiry
            if expiry_raw is not None:
                if not expiry_raw.isdigit() or not 1 <= int(expiry_raw) <= st.max_requested_expiry:
                    raise OAuthError("invalid_request", f"requested_expiry must be 1-{st.max_requested_expiry} seconds")
                expires_in = int(expiry_raw)
            audience = form.get("audience") or st.issuer + "userinfo"
            notification_token = form.get("client_notification_token") or None
            if notification_token is not None and len(notification_token) > 1024:
                raise OAuthError("invalid_request", "client_notification_token is too long")
            details = (
                _parse_authorization_details(form.get("authorization_details"))
                if st.authorization_details_supported
                else None
            )
            if username in st.users_without_push or sub in st.users_without_push:
                raise OAuthError("invalid_request", "the user does not have push notifications enabled")
        except OAuthError as exc:
            log.info("bc-authorize refused: %s", exc.error)
            return exc.response()
        created = st.create_request(
            client_id=client_id,
            username=username,
            sub=sub,
            scopes=scopes,
            audience=audience,
            binding_message=binding,
            authorization_details=details,
            expires_in=expires_in,
            client_notification_token=notification_token,
        )
        return JSONResponse(
            {"auth_req_id": created.auth_req_id, "expires_in": expires_in, "interval": created.interval},
            headers=NO_STORE,
        )

    async def token(request: Request) -> Response:
        with st.lock:
            st.token_requests += 1
        try:
            form = await _read_form(request)
            client_id = _authenticate_client(st, request, form)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError("invalid_request", "grant_type is required")
            if grant_type != CIBA_GRANT_TYPE:
                raise OAuthError("unsupported_grant_type", "only the CIBA grant is supported")
            if client_id in st.ciba_disabled_clients:
                raise OAuthError("unauthorized_client", "the client may not use CIBA")
            auth_req_id = form.get("auth_req_id")
            if not auth_req_id:
                raise OAuthError("invalid_request", "auth_req_id is required")
            body = st.poll(client_id, auth_req_id)
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers=NO_STORE)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(_login_page(st))
        username: Any = None
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                payload = await request.json()
            except ValueError:
                payload = None
            username = payload.get("username") if isinstance(payload, dict) else None
        else:
            try:
                username = (await _read_form(request)).get("username")
            except OAuthError as exc:
                return exc.response()
        if not isinstance(username, str) or not username:
            return OAuthError("invalid_request", "username is required").response()
        try:
            return JSONResponse(st.login_token(username), headers=NO_STORE)
        except LookupError:
            return OAuthError("invalid_request", "unknown user", 404).response()

    async def list_requests(request: Request) -> JSONResponse:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            return JSONResponse({"error": "invalid_request", "error_description": "unknown status"}, 400)
        return JSONResponse(st.list_requests(request.query_params.get("user") or None, status))

    def _decide(request: Request, approve: bool) -> JSONResponse:
        try:
            return JSONResponse(st.decide(request.path_params["request_id"], approve))
        except LookupError:
            return JSONResponse({"error": "not_found", "error_description": "no such request"}, 404)
        except ValueError as exc:
            return JSONResponse({"error": "conflict", "error_description": str(exc)}, 409)

    async def approve(request: Request) -> JSONResponse:
        return _decide(request, True)

    async def deny(request: Request) -> JSONResponse:
        return _decide(request, False)

    async def approvals_page(request: Request) -> HTMLResponse:
        user = request.query_params.get("user") or None
        return HTMLResponse(_approvals_page(st, user))

    async def approvals_fragment(request: Request) -> HTMLResponse:
        user = request.query_params.get("user") or None
        return HTMLResponse(_requests_fragment(st, user), headers={"Cache-Control": "no-store"})

    async def approvals_form(request: Request) -> Response:
        # The no-JavaScript path: a plain form post, then back to the page.
        if request.path_params["action"] not in ("approve", "deny"):
            return JSONResponse({"error": "not_found", "error_description": "unknown action"}, 404)
        result = _decide(request, request.path_params["action"] == "approve")
        if result.status_code >= 400:
            return result
        return RedirectResponse(str(request.url_for("approvals")), status_code=303)

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(st.stats())

    async def index(request: Request) -> Response:
        return RedirectResponse(str(request.url_for("approvals")), status_code=307)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/.well-known/openid-configuration", discovery),
            Route("/" + paths["jwks"], jwks),
            Route("/" + paths["backchannel"], bc_authorize, methods=["POST"]),
            Route("/" + paths["token"], token, methods=["POST"]),
            Route("/dev/login", login, methods=["GET", "POST"]),
            Route("/dev/ciba/requests", list_requests),
            Route("/dev/ciba/requests/{request_id}/approve", approve, methods=["POST"]),
            Route("/dev/ciba/requests/{request_id}/deny", deny, methods=["POST"]),
            Route("/dev/stats", stats),
            Route("/approvals", approvals_page, name="approvals"),
            Route("/approvals/requests", approvals_fragment),
            Route("/approvals/{request_id}/{action:str}", approvals_form, methods=["POST"]),
        ],
        middleware=[Middleware(LocalOnly), Middleware(Stalling, stall=st.stall)],
    )
    app.state.authz = st
    return app


# ---------------------------------------------------------------------------------------------------
# Pages


_STYLE = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec;
        --ok:#12805c; --no:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg);
       color:var(--ink); }
header { background:#101828; color:#fff; padding:14px 20px; }
header h1 { margin:0; font-size:18px; font-weight:600; }
header p { margin:2px 0 0; color:#98a2b3; font-size:13px; }
main { max-width:760px; margin:0 auto; padding:20px; }
nav.users { display:flex; gap:8px; margin-bottom:16px; flex-wrap:wrap; }
nav.users a { padding:4px 12px; border-radius:999px; border:1px solid var(--line); background:#fff;
              color:var(--ink); text-decoration:none; font-size:13px; }
nav.users a.active { background:#101828; color:#fff; border-color:#101828; }
h2 { font-size:14px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin:22px 0 8px; }
article.request { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:16px;
                  margin-bottom:12px; box-shadow:0 1px 2px rgba(16,24,40,.05); }
.request .top { display:flex; justify-content:space-between; gap:12px; align-items:baseline; }
.request .user { font-size:13px; color:var(--muted); }
.request .binding { font-size:20px; font-weight:600; margin:6px 0 8px; }
.request .meta { font-size:13px; color:var(--muted); }
.request code, .tag { font:12px ui-monospace,SFMono-Regular,Menlo,monospace; }
.tag { display:inline-block; background:#eef2f6; border-radius:6px; padding:1px 6px; margin:0 4px 4px 0; }
.details { margin:8px 0 0; padding:8px 10px; background:#f9fafb; border-radius:8px; font-size:13px; }
.details dt { font-weight:600; } .details dd { margin:0 0 4px 12px; }
.countdown { font-variant-numeric:tabular-nums; font-size:13px; color:var(--muted); white-space:nowrap; }
.countdown.soon { color:var(--no); }
.actions { display:flex; gap:8px; margin-top:12px; }
.actions form { margin:0; }
button { font:inherit; border:0; border-radius:8px; padding:8px 18px; cursor:pointer; font-weight:600; }
button.approve { background:var(--ok); color:#fff; } button.deny { background:#fff; color:var(--no);
  border:1px solid #fda29b; }
button:disabled { opacity:.5; cursor:default; }
.empty { color:var(--muted); padding:24px; text-align:center; border:1px dashed var(--line);
         border-radius:12px; }
table.recent { width:100%; border-collapse:collapse; font-size:13px; background:#fff; border-radius:8px; }
table.recent td { border-top:1px solid var(--line); padding:6px 8px; }
.status-approved { color:var(--ok); } .status-denied, .status-expired { color:var(--no); }
"""

_SCRIPT = """
(function () {
  const list = document.getElementById('requests');
  const query = new URLSearchParams(location.search);
  const user = query.get('user');
  let skew = 0;
  function tick() {
    const now = Date.now() / 1000 + skew;
    document.querySelectorAll('.countdown[data-expires-at]').forEach(function (el) {
      const left = Math.max(0, Math.floor(parseFloat(el.dataset.expiresAt) - now));
      const clock = Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0');
      el.textContent = left > 0 ? 'expires in ' + clock : 'expired';
      el.classList.toggle('soon', left < 30);
    });
  }
  function adopt(html) {
    const holder = document.createElement('div');
    holder.innerHTML = html;
    const fresh = holder.firstElementChild;
    if (!fresh) return;
    skew = parseFloat(fresh.dataset.serverNow) - Date.now() / 1000;
    if (fresh.dataset.signature !== list.dataset.signature) { list.replaceWith(fresh); wire(fresh); }
  }
  async function refresh() {
    try {
      const url = '/approvals/requests' + (user ? '?user=' + encodeURIComponent(user) : '');
      const response = await fetch(url, { cache: 'no-store' });
      if (response.ok) adopt(await response.text());
    } catch (e) { /* the server may be restarting; try again */ }
  }
  function wire(root) {
    root.querySelectorAll('form[data-action]').forEach(function (form) {
      form.addEventListener('submit', async function (event) {
        event.preventDefault();
        const article = form.closest('article');
        article.querySelectorAll('button').forEach(function (b) { b.disabled = true; });
        await fetch('/dev/ciba/requests/' + encodeURIComponent(article.dataset.requestId) + '/' +
                    form.dataset.action, { method: 'POST' });
        await refresh();
      });
    });
  }
  wire(document);
  adopt(list.outerHTML);
  tick();
  setInterval(tick, 250);
  setInterval(refresh, 1000);
})();
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _details_html(details: list[dict[str, Any]] | None) -> str:
    if not details:
        return ""
    parts = []
    for entry in details:
        rows = "".join(
            f"<dt>{_esc(k)}</dt><dd>{_esc(v if isinstance(v, str) else json.dumps(v))}</dd>"
            for k, v in entry.items()
            if k != "type"
        )
        parts.append(f'<dl class="details"><dt>Action</dt><dd><code>{_esc(entry.get("type"))}</code></dd>{rows}</dl>')
    return "".join(parts)


def _request_card(row: dict[str, Any]) -> str:
    rid = _esc(row["id"])
    scopes = "".join(f'<span class="tag">{_esc(s)}</span>' for s in row["scope"].split())
    return f"""
<article class="request" data-request-id="{rid}">
  <div class="top"><span class="user">Request for <strong>{_esc(row["user"])}</strong></span>
    <span class="countdown" data-expires-at="{row["expires_at"]:.3f}">expires soon</span></div>
  <div class="binding">{_esc(row["binding_message"])}</div>
  <div class="meta">Scopes: {scopes}</div>
  <div class="meta">Audience: <code>{_esc(row["audience"])}</code></div>
  {_details_html(row["authorization_details"])}
  <div class="actions">
    <form method="post" action="/approvals/{rid}/approve" data-action="approve">
      <button class="approve" type="submit">Approve</button></form>
    <form method="post" action="/approvals/{rid}/deny" data-action="deny">
      <button class="deny" type="submit">Deny</button></form>
  </div>
</article>"""


def _requests_fragment(state: AuthzState, user: str | None) -> str:
    rows = state.list_requests(user)
    pending = [r for r in rows if r["status"] == "pending"]
    recent = sorted((r for r in rows if r["status"] != "pending"), key=lambda r: -(r["decided_at"] or r["expires_at"]))
    signature = hashlib.sha256(json.dumps([(r["id"], r["status"]) for r in rows[-50:]]).encode()).hexdigest()[:16]
    cards = "".join(_request_card(r) for r in pending) or '<div class="empty">No requests are waiting.</div>'
    history = "".join(
        f"<tr><td>{_esc(r['user'])}</td><td>{_esc(r['binding_message'])}</td>"
        f'<td class="status-{_esc(r["status"])}">{_esc(r["status"])}</td></tr>'
        for r in recent[:10]
    )
    recent_html = f'<h2>Recent</h2><table class="recent">{history}</table>' if history else ""
    return (
        f'<section id="requests" data-signature="{signature}" data-server-now="{time.time():.3f}">'
        f"<h2>Waiting for approval ({len(pending)})</h2>{cards}{recent_html}</section>"
    )


def _approvals_page(state: AuthzState, user: str | None) -> str:
    links = ['<a href="/approvals"' + (' class="active"' if not user else "") + ">Everyone</a>"]
    for name in state.users:
        active = ' class="active"' if user in (name, state.users[name]) else ""
        links.append(f'<a href="/approvals?user={_esc(name)}"{active}>{_esc(name)}</a>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Approvals - dev authorization server</title><style>{_STYLE}</style>
<noscript><meta http-equiv="refresh" content="5"></noscript></head>
<body><header><h1>Approval requests</h1>
<p>The user's phone, played by the dev authorization server at {_esc(state.issuer)}</p></header>
<main><nav class="users">{"".join(links)}</nav>
{_requests_fragment(state, user)}
</main><script>{_SCRIPT}</script></body></html>"""


def _login_page(state: AuthzState) -> str:
    options = "".join(f'<option value="{_esc(n)}">{_esc(n)}</option>' for n in state.users)
    script = """
document.getElementById('login').addEventListener('submit', async function (event) {
  event.preventDefault();
  const response = await fetch('/dev/login', { method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: document.getElementById('username').value }) });
  const body = await response.json();
  document.getElementById('token').textContent = response.ok ? body.access_token : body.error_description;
});"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dev login</title><style>{_STYLE}
pre {{ white-space:pre-wrap; word-break:break-all; background:#fff; border:1px solid var(--line);
      padding:10px; border-radius:8px; font-size:12px; }}</style></head>
<body><header><h1>Dev login</h1>
<p>Access tokens for {_esc(state.api_audience)} (development only)</p></header>
<main><form id="login" method="post" action="/dev/login">
<label>User <select id="username" name="username">{options}</select></label>
<button class="approve" type="submit">Get token</button></form><pre id="token"></pre></main>
<script>{script}</script></body></html>"""


# ---------------------------------------------------------------------------------------------------
# Server


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

    def __enter__(self) -> DevAuthorizationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "AuthzState",
    "CIBARequest",
    "DevAuthorizationServer",
    "OAuthError",
    "SigningKey",
    "create_authz_app",
    "create_state",
]
