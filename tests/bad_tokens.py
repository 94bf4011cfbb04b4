"""Tokens an attacker or a misconfigured client might send, each of which must be refused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from devservers.authz_server import SigningKey


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def bad_tokens(world: Any) -> dict[str, str]:
    """Named bad tokens for the dev server's users and API audience."""
    state = world.authz.state
    key: SigningKey = state.signing_key
    now = int(time.time())
    good = {"iss": state.issuer, "sub": state.users["alice"], "aud": state.api_audience, "iat": now, "exp": now + 600}
    stranger = SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    valid = world.token("alice")
    header, payload, signature = valid.split(".")
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    return {
        "expired": key.sign({**good, "iat": now - 7200, "exp": now - 3600}),
        "wrong audience": key.sign({**good, "aud": "https://someone-else.example/api"}),
        "wrong issuer": key.sign({**good, "iss": "https://evil.example/"}),
        "bad signature": f"{header}.{payload}.{flipped}",
        "signed by another key with our kid": jwt.encode(
            good, stranger.private_key, algorithm="RS256", headers={"kid": key.kid}
        ),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "HS256 with the public key": _hs256_with_public_key(good, key),
        "not a jwt": "definitely-not-a-token",
    }


def _hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    body = _b64(claims)
    mac = hmac.new(key.public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
