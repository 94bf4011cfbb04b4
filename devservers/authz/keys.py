"""`SigningKey`: the RSA key that signs every token the dev authorization server issues.

Its own module because the key outlives everything else: it can be kept in a PEM file so that tokens and
cached JWKS stay valid across runs, and tests use it alone to forge or sign tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["SigningKey"]


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
