"""`AuthzState`: everything the dev authorization server knows, and the CIBA rules applied to it.

The state is separate from the HTTP app so that it outlives it: a test stops the server and starts a new
one on the same port with the same state (an outage that loses neither the requests nor the signing key),
and the process running the server flips test switches on it (`drop_pings`, `stall`). All of it is guarded
by one lock, because the approvals page, the token endpoint and the test driver touch it from different
threads.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt

from auth.client_assertion import CLIENT_ASSERTION_TYPE
from devservers.authz.ciba_request import CIBARequest, RequestStatus
from devservers.authz.keys import SigningKey
from devservers.authz.ping_sender import PingSender
from devservers.authz.protocol import ENDPOINT_PATHS, SLOW_DOWN_INCREMENT, OAuthError
from devservers.authz.request_file import read_requests, write_requests
from devservers.authz.tokens import ciba_token_response, login_token_response
from devservers.faults import Stall

__all__ = ["USER_PREFIX", "AuthzState", "create_state"]

logger = logging.getLogger("devservers.authz_server")  # the name the server has always logged under

USER_PREFIX = "auth0|"


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
    pinger: PingSender = field(default_factory=PingSender, repr=False)
    """Delivers the pings: a bounded queue with retries, not a thread per approval."""
    client_keys: dict[str, Any] = field(default_factory=dict, repr=False)
    """private_key_jwt clients: client id -> public key (PEM bytes or a key object)."""
    seen_assertions: dict[str, float] = field(default_factory=dict, repr=False)
    requests_file: Path | None = None
    """Where the requests are kept (JSON, mode 0600) so that a restart forgets none; None: memory only."""
    backchannel_requests: int = 0
    token_requests: int = 0
    discovery_requests: int = 0
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
        loaded = read_requests(self.requests_file)
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
            write_requests(self.requests_file, self.requests.values())

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
        """Ping mode: tell the client the result is ready (a POST with the request's token, queued off the
        caller's thread). The client then fetches it at the token endpoint."""
        endpoint = self.notification_endpoints.get(request.client_id)
        if not endpoint or not request.client_notification_token or self.drop_pings:
            return
        with self.lock:
            self.pings_sent += 1
        self.pinger.send(endpoint, request.client_notification_token, request.auth_req_id)

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
                return ciba_token_response(
                    self.signing_key, issuer=self.issuer, request=request, now=now, lifetime=self.access_token_lifetime
                )
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

    def login_token(self, username: str) -> dict[str, Any]:
        """A user access token for the API audience (what a browser login would give the chat page)."""
        found = self.user_by_any(username)
        if found is None:
            raise LookupError(username)
        name, sub = found
        return login_token_response(
            self.signing_key,
            issuer=self.issuer,
            audience=self.api_audience,
            name=name,
            sub=sub,
            now=time.time(),
            lifetime=self.login_token_lifetime,
        )

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "backchannel_requests": self.backchannel_requests,
                "discovery_requests": self.discovery_requests,
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
