"""`private_key_jwt` client authentication (RFC 7523 section 2.2, OpenID Connect Core section 9).

Instead of a shared secret, the client signs a short-lived JWT with its private key on every request to
the authorization server: `iss` = `sub` = the client id, `aud` = the issuer (CIBA Core 7.1: the OP accepts
its issuer, token endpoint or backchannel endpoint), a fresh `jti`, and a lifetime of a minute. Auth0
supports it for CIBA; the embedded dev server verifies it against the client's registered public key.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class ClientAssertionSigner:
    """Signs client assertions for one client with one private key (RSA: RS256; EC P-256: ES256)."""

    def __init__(self, client_id: str, private_key_pem: str | bytes, *, kid: str | None = None, lifetime: int = 60):
        raw = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError):
            raise ValueError("not an unencrypted PEM private key") from None
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            self.algorithm = "ES256"
        else:
            raise ValueError("the key must be RSA or EC P-256")
        self.client_id = client_id
        self.kid = kid
        self.lifetime = lifetime
        self._key = key

    def __repr__(self) -> str:
        return f"ClientAssertionSigner(client_id={self.client_id!r}, alg={self.algorithm}, kid={self.kid!r})"

    @classmethod
    def from_file(cls, client_id: str, path: str | Path, **kwargs: object) -> ClientAssertionSigner:
        return cls(client_id, Path(path).read_bytes(), **kwargs)  # type: ignore[arg-type]

    def public_key_pem(self) -> bytes:
        """The public half, PEM: what the authorization server registers for this client."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def assertion(self, audience: str) -> str:
        """A new assertion (fresh `jti`: one per request, retries included)."""
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex + secrets.token_hex(4),
        }
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)


def generate_private_key_pem() -> bytes:
    """A new RSA-2048 private key, PEM (for the dev stack and tests)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
