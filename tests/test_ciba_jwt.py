"""`JWTVerifier` against the dev server's real JWKS: valid tokens pass, forgeries are refused by type."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.verifier import (
    DisallowedAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    JWTVerifier,
    MalformedTokenError,
    MissingClaimError,
    SigningKeysUnavailableError,
    TokenExpiredError,
    TokenNotYetValidError,
    UnknownSigningKeyError,
)
from devservers.authz_server import DevAuthorizationServer, SigningKey
from tests.ciba_fixtures import API_AUDIENCE, authz  # noqa: F401  (fixture)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims_for(server: DevAuthorizationServer, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": server.issuer, "sub": "auth0|alice", "aud": API_AUDIENCE, "iat": now, "exp": now + 300}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(signature)}"


async def test_valid_token_passes(authz: DevAuthorizationServer) -> None:  # noqa: F811
    verifier = JWTVerifier(issuer=authz.issuer, audience=API_AUDIENCE)
    token = authz.state.login_token("alice")["access_token"]
    claims = await verifier.verify(token)
    assert claims["sub"] == "auth0|alice" and claims["aud"] == API_AUDIENCE
    assert await verifier.verify(token) == claims
    assert verifier.fetches == 1  # JWKS cached
    # The issuer without its trailing slash names the same issuer.
    assert (await JWTVerifier(issuer=authz.issuer.rstrip("/"), audience=API_AUDIENCE).verify(token))["sub"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 600}, TokenExpiredError),
        ({"nbf": int(time.time()) + 600}, TokenNotYetValidError),
        ({"aud": "https://someone-else/api"}, InvalidAudienceError),
        ({"iss": "https://evil.example/"}, InvalidIssuerError),
        ({"sub": None}, MissingClaimError),
        ({"exp": None}, MissingClaimError),
    ],
)
async def test_bad_claims_are_refused(
    authz: DevAuthorizationServer,  # noqa: F811
    changes: dict[str, Any],
    error: type[InvalidTokenError],
) -> None:
    token = authz.state.signing_key.sign(claims_for(authz, **changes))
    with pytest.raises(error) as caught:
        await JWTVerifier(issuer=authz.issuer, audience=API_AUDIENCE).verify(token)
    assert token not in str(caught.value) and caught.value.reason


async def test_forgeries_are_refused(authz: DevAuthorizationServer) -> None:  # noqa: F811
    verifier = JWTVerifier(issuer=authz.issuer, audience=API_AUDIENCE)
    claims = claims_for(authz)
    kid = authz.state.signing_key.kid

    # Signed by another key that claims the server's kid.
    impostor = SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    resigned = jwt.encode(claims, impostor.private_key, algorithm="RS256", headers={"kid": kid})
    with pytest.raises(InvalidSignatureError):
        await verifier.verify(resigned)

    # alg: none, with and without a signature part.
    for token in (unsigned({"alg": "none", "kid": kid}, claims), unsigned({"alg": "none"}, claims, b"x")):
        with pytest.raises(DisallowedAlgorithmError):
            await verifier.verify(token)

    # HS256 keyed with the public key PEM (the classic key-confusion attack).
    pem = authz.state.signing_key.public_pem
    head = {"alg": "HS256", "kid": kid, "typ": "JWT"}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}".encode()
    confused = signing_input.decode() + "." + b64(hmac.new(pem, signing_input, hashlib.sha256).digest())
    with pytest.raises(DisallowedAlgorithmError):
        await verifier.verify(confused)

    # A tampered payload under the real signature.
    real = authz.state.signing_key.sign(claims)
    h, _, s = real.split(".")
    tampered = f"{h}.{b64(json.dumps({**claims, 'sub': 'auth0|bob'}).encode())}.{s}"
    with pytest.raises(InvalidSignatureError):
        await verifier.verify(tampered)

    for junk in ("", "abc", "a.b", "a.b.c", "!!!.e30.x"):
        with pytest.raises(MalformedTokenError):
            await verifier.verify(junk)


async def test_unknown_kid_refreshes_once_then_is_rate_limited(authz: DevAuthorizationServer) -> None:  # noqa: F811
    verifier = JWTVerifier(issuer=authz.issuer, audience=API_AUDIENCE, min_refresh_interval=60)
    await verifier.verify(authz.state.login_token("alice")["access_token"])
    stranger = SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for _ in range(5):
        with pytest.raises(UnknownSigningKeyError):
            await verifier.verify(stranger.sign(claims_for(authz)))
    assert verifier.fetches == 2  # the first fetch, and one refresh for the unknown kid


def test_symmetric_or_none_algorithms_cannot_be_configured() -> None:
    for algorithms in (["HS256"], ["RS256", "none"], []):
        with pytest.raises(ValueError):
            JWTVerifier(issuer="https://x/", audience="a", algorithms=algorithms)


async def test_an_issuer_outage_keeps_the_last_good_keys_and_backs_off() -> None:
    """After the key set expires, a failing issuer must not make every request refetch behind a lock (each
    a timeout long): the last good keys serve for a grace period, and refetches back off."""
    from tests.jwks_helpers import JWKSServer

    issuer = JWKSServer().start()
    verifier = JWTVerifier(issuer.issuer, "https://api", jwks_ttl=0.2, timeout=2.0)
    token = issuer.token(audience="https://api")
    assert (await verifier.verify(token))["sub"] == "auth0|alice"
    fetches = verifier.fetches
    issuer.stop()  # the outage
    await asyncio.sleep(0.3)  # the key set is now stale (a TTL, not an event to wait for)
    started = time.monotonic()
    for _ in range(20):
        assert (await verifier.verify(issuer.token(audience="https://api")))["sub"] == "auth0|alice"
    assert time.monotonic() - started < 3.0  # one failed fetch at most, then the backoff holds
    assert verifier.fetches - fetches == 1
    verifier.stale_grace = 0.0  # past the grace period: refused fast, as unavailable (503), not as invalid
    with pytest.raises(SigningKeysUnavailableError):
        await verifier.verify(issuer.token(audience="https://api"))


async def test_a_signed_jwt_that_is_not_an_access_token_is_refused() -> None:
    """A DPoP proof or a logout token is signed by a key the issuer publishes, but is no access token."""
    import jwt as pyjwt

    from tests.jwks_helpers import JWKSServer

    issuer = JWKSServer().start()
    try:
        verifier = JWTVerifier(issuer.issuer, "https://api")
        claims = issuer.claims(audience="https://api")

        def typed(typ: str) -> str:
            headers = {"kid": issuer.key.kid, "typ": typ}
            return pyjwt.encode(claims, issuer.key.private_key, algorithm="RS256", headers=headers)

        for typ in ("dpop+jwt", "logout+jwt", "secevent+jwt"):
            with pytest.raises(MalformedTokenError, match="typ"):
                await verifier.verify(typed(typ))
        for typ in ("JWT", "at+jwt", "application/at+JWT"):
            assert (await verifier.verify(typed(typ)))["sub"] == "auth0|alice"
    finally:
        issuer.stop()
