"""Verify bearer JWTs (access tokens) against an issuer's published keys.

`JWTVerifier(issuer, audience).verify(token)` returns the claims of a token that is signed by one of the
issuer's keys (JWKS from OIDC discovery's `jwks_uri`), names that issuer and audience, and is within its
`nbf`/`exp` window (with a small leeway for clock skew). Everything else raises an `InvalidTokenError`
subclass with a short reason that never echoes the token.

The algorithm allow-list holds asymmetric algorithms only and the token's `alg` must also match the key it
selects: that is what stops the classic forgeries, `alg: none` and an HS256 MAC keyed with the public key.
The key set is cached and refetched at most once per `min_refresh_interval` when an unknown `kid` shows up
(key rotation), so a stream of made-up kids cannot make the verifier hammer the issuer.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import httpx
import jwt

from auth.discovery import DiscoveryCache, process_discovery
from auth.http_pool import tls_context
from auth.issuer import discovery_url
from runtime.backoff import exponential_delay
from runtime.counters import count

log = logging.getLogger(__name__)

ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
"""Accepted JWT `typ` headers (RFC 9068 access tokens, or the plain `JWT` Auth0 writes); none is fine too."""

DEFAULT_VERIFIED_TTL = 60.0
"""Seconds a process's shared verifier accepts a token it verified without checking it again."""
MAX_VERIFIED_TOKENS = 10_000

ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)

# Which JWK key types may verify which algorithms (the token's alg must fit the selected key).
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (RFC 6750: the scheme in any case, spaces
    around the token ignored); None for no header, another scheme, or an empty token."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class InvalidTokenError(Exception):
    """The token is not acceptable. `reason` is short and safe to show to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedTokenError(InvalidTokenError):
    """Not a well-formed JWS compact token."""


class DisallowedAlgorithmError(InvalidTokenError):
    """`alg` is not in the allow-list (e.g. `none`, HS256) or does not fit the signing key."""


class UnknownSigningKeyError(InvalidTokenError):
    """No key of the issuer has the token's `kid`, even after a refresh."""


class InvalidSignatureError(InvalidTokenError):
    """The signature does not verify with the issuer's key."""


class TokenExpiredError(InvalidTokenError):
    """`exp` has passed."""


class TokenNotYetValidError(InvalidTokenError):
    """`nbf` (or `iat`) is in the future."""


class InvalidAudienceError(InvalidTokenError):
    """`aud` does not name this API."""


class InvalidIssuerError(InvalidTokenError):
    """`iss` is not the trusted issuer."""


class MissingClaimError(InvalidTokenError):
    """A required claim is absent."""


class SigningKeysUnavailableError(InvalidTokenError):
    """The issuer's keys could not be fetched, so no token can be verified now (a server-side fault;
    still an `InvalidTokenError` so callers fail closed)."""


class JWTVerifier:
    """Verify access tokens of `issuer` for `audience` (a string or several accepted audiences).

    `jwks_uri` skips discovery when given. `issuer` is accepted with or without its trailing slash (Auth0
    writes `https://tenant/`; both spellings name the same issuer). `leeway` is the clock skew tolerated
    on `exp`/`nbf`/`iat`, in seconds.
    """

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        algorithms: Sequence[str] = ASYMMETRIC_ALGORITHMS,
        *,
        jwks_uri: str | None = None,
        leeway: float = 10.0,
        required_claims: Sequence[str] = ("exp", "iss", "aud", "sub"),
        jwks_ttl: float = 600.0,
        min_refresh_interval: float = 5.0,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
        verified_ttl: float = 0.0,
        stale_grace: float = 3600.0,
        discovery: DiscoveryCache | None = None,
    ) -> None:
        allowed = tuple(algorithms)
        if not allowed:
            raise ValueError("at least one algorithm is required")
        refused = [a for a in allowed if a not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(f"only asymmetric algorithms are allowed, not {', '.join(refused)}")
        self.issuer = issuer
        self.verified_ttl = verified_ttl
        self._verified: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()
        self._issuers = sorted({issuer, issuer.rstrip("/"), issuer.rstrip("/") + "/"})
        self.audience: list[str] = [audience] if isinstance(audience, str) else list(audience)
        if not self.audience or not all(self.audience):
            raise ValueError("an audience is required")
        self.algorithms = allowed
        self.leeway = leeway
        self.required_claims = list(required_claims)
        self.jwks_ttl = jwks_ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self._http = http
        self._jwks_uri = jwks_uri
        self._discovery = discovery
        self._keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        self._fetched_at: float | None = None
        self._last_unknown_kid_refresh = -math.inf
        self._lock: asyncio.Lock | None = None
        self._failures = 0
        self._next_fetch_at = -math.inf
        self.stale_grace = stale_grace
        self.fetches = 0
        """How many times the key set was fetched (for tests and metrics)."""

    def __repr__(self) -> str:
        return f"JWTVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    # -- keys ----------------------------------------------------------------------------------------
    async def _get_json(self, client: httpx.AsyncClient, url: str) -> Any:
        response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()

    async def _refresh(self) -> None:
        self.fetches += 1
        try:
            if self._http is not None:
                document = await self._fetch(self._http)
            else:
                async with httpx.AsyncClient(timeout=self.timeout, verify=tls_context()) as client:
                    document = await self._fetch(client)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("fetching the signing keys of %s failed: %s", self.issuer, type(exc).__name__)
            raise SigningKeysUnavailableError("the issuer's signing keys are unavailable") from None
        keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            pinned = entry.get("alg") if isinstance(entry.get("alg"), str) else None
            try:
                keys[entry.get("kid")] = (jwt.PyJWK(entry), pinned)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _fetch(self, client: httpx.AsyncClient) -> Any:
        if self._jwks_uri is None:

            async def fetch_discovery() -> dict[str, Any]:
                document = await self._get_json(client, discovery_url(self.issuer))
                if not isinstance(document, dict):
                    raise ValueError("the discovery document is not a JSON object")
                return document

            if self._discovery is None:
                discovery = await fetch_discovery()
            else:
                discovery = await self._discovery.document(self.issuer, fetch_discovery)
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not uri:
                raise ValueError("no jwks_uri in the discovery document")
            self._jwks_uri = uri
        return await self._get_json(client, self._jwks_uri)

    def _fresh(self) -> bool:
        return self._fetched_at is not None and time.monotonic() - self._fetched_at < self.jwks_ttl

    def _usable(self) -> bool:
        """Fresh, or stale but within the grace period (the issuer is failing: keep the last good keys)."""
        return self._fetched_at is not None and time.monotonic() - self._fetched_at < self.jwks_ttl + self.stale_grace

    async def _try_refresh(self) -> bool:
        """Refetch unless a recent failure says wait (backoff 1 s, 2 s, ... 60 s): an issuer outage must not
        turn every request into a fetch with a timeout. False if the keys could not be fetched now."""
        if time.monotonic() < self._next_fetch_at:
            return False
        try:
            await self._refresh()
        except SigningKeysUnavailableError:
            self._failures += 1
            self._next_fetch_at = time.monotonic() + exponential_delay(self._failures, 1.0, 60.0)
            return False
        self._failures, self._next_fetch_at = 0, -math.inf
        return True

    def _lookup(self, kid: str | None) -> tuple[jwt.PyJWK, str | None] | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def signing_key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        """The issuer's key with `kid` and the `alg` its JWK pins (if any), refetching the key set once if
        the kid is unknown (rate limited)."""
        key = self._lookup(kid) if self._fresh() else None
        if key is not None:
            return key
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            key = self._lookup(kid) if self._fresh() else None
            if key is None and not self._fresh():
                refreshed = await self._try_refresh()
                if not refreshed and not self._usable():
                    raise SigningKeysUnavailableError("the issuer's signing keys are unavailable")
                key = self._lookup(kid)
            if key is None and time.monotonic() - self._last_unknown_kid_refresh >= self.min_refresh_interval:
                # A kid we do not know may be a freshly rotated key: look once, then not again for a while.
                self._last_unknown_kid_refresh = time.monotonic()
                if not await self._try_refresh() and not self._usable():
                    raise SigningKeysUnavailableError("the issuer's signing keys are unavailable")
                key = self._lookup(kid)
        if key is None:
            raise UnknownSigningKeyError("the token's signing key is not one of the issuer's keys")
        return key

    # -- verification --------------------------------------------------------------------------------
    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of `token` if it is valid; raises an `InvalidTokenError` subclass otherwise.

        With `verified_ttl`, a token this verifier accepted is accepted again without a signature check for
        that many seconds (never past its `exp`): the agents of one host, and the ingress's routes, then
        check a caller's token once, not once per call."""
        digest = hashlib.sha256(token.encode()).digest() if isinstance(token, str) and self.verified_ttl > 0 else b""
        hit = self._verified.get(digest) if digest else None
        if hit is not None and hit[0] > time.time():
            self._verified.move_to_end(digest)
            count("jwt_verified_cache_hits")
            return dict(hit[1])
        claims = await self._check(token)
        if digest:
            until = min(time.time() + self.verified_ttl, float(claims.get("exp") or 0))
            self._verified[digest] = (until, dict(claims))
            while len(self._verified) > MAX_VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        return claims

    async def _check(self, token: str) -> dict[str, Any]:
        count("jwt_signature_checks")
        if not isinstance(token, str) or token.count(".") != 2:
            raise MalformedTokenError("the token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise MalformedTokenError("the token's header is not readable") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise DisallowedAlgorithmError("the token's signing algorithm is not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES):
            # a DPoP proof, a logout token, ... is a JWT signed by someone, but not an access token
            raise MalformedTokenError("the token is not an access token (typ)")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedTokenError("the token's key id is not a string")
        key, pinned_alg = await self.signing_key(kid)
        expected_kty = _KEY_TYPES.get(alg[:2])
        if expected_kty is not None and key.key_type != expected_kty:
            raise DisallowedAlgorithmError("the token's algorithm does not match its signing key")
        if pinned_alg is not None and pinned_alg != alg:  # a JWK that pins its `alg` verifies only that
            raise DisallowedAlgorithmError("the token's algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self._issuers,
                leeway=self.leeway,
                options={"require": self.required_claims, "verify_iat": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpiredError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenNotYetValidError("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise InvalidAudienceError("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidIssuerError("the token was not issued by the trusted issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise MissingClaimError(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidSignatureError("the token's signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise DisallowedAlgorithmError("the token's signing algorithm is not allowed") from None
        except jwt.InvalidTokenError as exc:
            raise MalformedTokenError(f"the token is invalid ({type(exc).__name__})") from None
        return claims


@functools.lru_cache(maxsize=16)
def shared_verifier(issuer: str, audience: str, verified_ttl: float = DEFAULT_VERIFIED_TTL) -> JWTVerifier:
    """The process's one verifier (one JWKS cache) for this issuer and audience.

    Many agents live in one host process: each fetching discovery and the JWKS itself would cost every
    activation two network round trips. Sharing also means one unknown-`kid` refresh serves them all, and
    the discovery document is the one the process's CIBA client reads too (`auth.discovery`).
    """
    return JWTVerifier(issuer=issuer, audience=audience, verified_ttl=verified_ttl, discovery=process_discovery())


__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DisallowedAlgorithmError",
    "InvalidAudienceError",
    "InvalidIssuerError",
    "InvalidSignatureError",
    "InvalidTokenError",
    "JWTVerifier",
    "MalformedTokenError",
    "MissingClaimError",
    "SigningKeysUnavailableError",
    "TokenExpiredError",
    "TokenNotYetValidError",
    "UnknownSigningKeyError",
    "shared_verifier",
]
