"""`TokenVerifier`: the check in front of every order route, from the `Authorization` header to the claims.

The JWT itself (signature against the issuer's JWKS, algorithm allow-list, `iss`/`aud`/`exp`/`nbf`, key
caching and rotation) is `auth.verifier.JWTVerifier`'s job; this module adds what is the checkout API's
own: the Bearer scheme, the `stock:buy` scope, and translating each refusal into a `CheckoutError` with
its RFC 6750 `WWW-Authenticate` challenge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auth.verifier import InvalidTokenError, JWTVerifier, SigningKeysUnavailableError
from devservers.checkout.errors import CheckoutError

__all__ = ["REQUIRED_SCOPE", "TokenVerifier", "bearer_challenge", "token_scopes"]

REQUIRED_SCOPE = "stock:buy"


def bearer_challenge(error: str | None = None, scope: str | None = None) -> dict[str, str]:
    """The `WWW-Authenticate` header of a refusal (RFC 6750), with its `error` and `scope` when given."""
    parts = ['Bearer realm="checkout"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def token_scopes(claims: Mapping[str, Any]) -> set[str]:
    """The scopes a token grants, from `scope` (space-separated) or `scp` (a list), whichever it has."""
    scopes: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(str(v) for v in value)
    return scopes


def _bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or a 401 `CheckoutError`."""
    if not authorization:
        raise CheckoutError(
            401,
            "missing_token",
            "an 'Authorization: Bearer <token>' header is required",
            bearer_challenge(),
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise CheckoutError(
            401,
            "invalid_request",
            "the Authorization header must use the Bearer scheme",
            bearer_challenge("invalid_request"),
        )
    return token


class TokenVerifier:
    """Verify a checkout access token with the project's one JWT verifier (`auth.verifier`): signature
    against the issuer's keys (`jwks_uri` from OIDC discovery unless `jwks_url` is given: no provider's
    paths are assumed), asymmetric algorithm allow-list, `iss`, `aud`, `exp`/`nbf`; then the scope."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        algorithms: Sequence[str] = ("RS256",),
        leeway: float = 5.0,
        required_scope: str = REQUIRED_SCOPE,
    ) -> None:
        if not algorithms or any(a.lower() == "none" or a.upper().startswith("HS") for a in algorithms):
            raise ValueError("the checkout API only accepts asymmetric signature algorithms")
        self.issuer = issuer
        self.audience = audience
        self.required_scope = required_scope
        self.jwks = JWTVerifier(
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            jwks_uri=jwks_url,
            leeway=leeway,
            required_claims=("exp", "iss", "aud"),
            min_refresh_interval=1.0,
        )

    async def verify(self, authorization: str | None, *, require_scope: bool = True) -> dict[str, Any]:
        """The claims of a valid checkout token (with the purchase scope, unless `require_scope` is off:
        reading one's own orders needs a token for this API, not a purchase approval)."""
        token = _bearer_token(authorization)
        try:
            claims = await self.jwks.verify(token)
        except SigningKeysUnavailableError:
            raise CheckoutError(503, "jwks_unavailable", "the issuer's signing keys could not be fetched") from None
        except InvalidTokenError as exc:
            raise CheckoutError(401, "invalid_token", exc.reason, bearer_challenge("invalid_token")) from None
        if require_scope and self.required_scope not in token_scopes(claims):
            raise CheckoutError(
                403,
                "insufficient_scope",
                f"the token lacks the {self.required_scope!r} scope",
                bearer_challenge("insufficient_scope", self.required_scope),
            )
        return claims
