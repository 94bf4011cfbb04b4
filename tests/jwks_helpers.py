"""Test helpers: an RSA signing key, a tiny JWKS server, and tokens signed in-test.

The checkout API fetches the issuer's keys from `JWKSServer.jwks_url`; tests mint tokens with
`JWKSServer.token(...)` (or sign with another key to prove a bad signature is refused).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devservers.server_thread import ServerThread


@dataclass
class RSAKey:
    """An RSA private key with a `kid`; `public_jwk` is what a JWKS publishes."""

    kid: str = field(default_factory=lambda: "test-" + secrets.token_hex(4))
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    @property
    def public_jwk(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, algorithm: str = "RS256") -> str:
        return jwt.encode(claims, self.private_key, algorithm=algorithm, headers={"kid": kid or self.kid})


def create_jwks_app(keys: list[RSAKey], counter: dict[str, int] | None = None) -> Starlette:
    """Serves `/.well-known/jwks.json` (and a minimal discovery document) for `keys`."""
    hits = counter if counter is not None else {}

    async def jwks(_request: Request) -> JSONResponse:
        hits["jwks"] = hits.get("jwks", 0) + 1
        return JSONResponse({"keys": [k.public_jwk for k in keys]})

    async def discovery(request: Request) -> JSONResponse:
        base = str(request.base_url)
        return JSONResponse({"issuer": base, "jwks_uri": base + ".well-known/jwks.json"})

    return Starlette(
        routes=[
            Route("/.well-known/jwks.json", jwks),
            Route("/.well-known/openid-configuration", discovery),
        ]
    )


class JWKSServer(ServerThread):
    """A test issuer: publishes `key`'s public JWK; `issuer` is `http://127.0.0.1:PORT/`."""

    def __init__(self, key: RSAKey | None = None) -> None:
        self.key = key or RSAKey()
        self.keys = [self.key]  # published live: append a key to rotate
        self.hits: dict[str, int] = {}
        super().__init__(create_jwks_app(self.keys, self.hits))

    @property
    def issuer(self) -> str:
        return self.url + "/"

    @property
    def jwks_url(self) -> str:
        return self.url + "/.well-known/jwks.json"

    def claims(
        self,
        *,
        audience: str | list[str],
        scope: str | None = "openid stock:buy",
        subject: str = "auth0|alice",
        expires_in: float = 300,
        issuer: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": int(now + expires_in),
            "jti": uuid.uuid4().hex,
            "azp": "test-client",
        }
        if scope is not None:
            claims["scope"] = scope
        claims.update(extra)
        return claims

    def token(self, *, signer: RSAKey | None = None, kid: str | None = None, **claim_args: Any) -> str:
        """A token for `claims(**claim_args)`, signed by this issuer's key unless `signer` is given."""
        key = signer or self.key
        return key.sign(self.claims(**claim_args), kid=kid or self.key.kid)

    def start(self, timeout: float = 15.0) -> JWKSServer:
        super().start(timeout)
        return self


CHECKOUT_AUDIENCE = "http://localhost:5000/api/checkout"
