"""`AuthAgent`: every call carries the caller's bearer JWT, verified before the agent does anything.

Verification is against the configured issuer's JWKS (OIDC discovery, cached, refreshed on an unknown
`kid`), checking signature, `iss`, `aud` (`AUTH0_AUDIENCE`), `exp`/`nbf`, with an asymmetric-only
algorithm allow-list, so `alg: none` and HS256-signed-with-the-public-key tokens are refused.
"""

from __future__ import annotations

from typing import Any

from agents.errors import AuthUnavailableError, UnauthenticatedError
from agents.mixin_base import MixinBase
from auth.settings import auth_settings
from auth.verifier import InvalidTokenError, JWTVerifier, SigningKeysUnavailableError, bearer_token
from runtime import internal


async def verified_claims(verifier: JWTVerifier, token: str) -> dict[str, Any]:
    """The claims of `token` if `verifier` accepts it and it names a subject; else `UnauthenticatedError`
    (401), or `AuthUnavailableError` (503, retry) when the issuer's keys cannot be fetched: the token may be
    fine. The one mapping from a token check to the caller's answer, for the agents and the HTTP API."""
    try:
        claims = await verifier.verify(token)
    except SigningKeysUnavailableError:  # the issuer is down, the token may be fine: retry, not 401
        raise AuthUnavailableError("the issuer's signing keys cannot be fetched; retry shortly") from None
    except InvalidTokenError as exc:
        raise UnauthenticatedError(f"invalid token: {exc.reason}") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise UnauthenticatedError("the token has no subject")
    return claims


class AuthAgent(MixinBase):
    """Mixin for an `AIChatAgent`: `authenticate(token)` verifies the JWT and returns its claims.

    The verifier (and its JWKS cache) is the host process's shared one, so activating a thread costs no
    discovery or JWKS round trip once any agent of the process has fetched them.
    """

    _jwt_verifier: JWTVerifier | None = None

    def jwt_verifier(self) -> JWTVerifier:
        if self._jwt_verifier is None:
            self._jwt_verifier = auth_settings().shared_verifier()
        return self._jwt_verifier

    @internal
    async def authenticate(self, token: str | None) -> dict[str, Any]:
        if not isinstance(token, str) or not token.strip():
            raise UnauthenticatedError("a bearer token is required")
        raw = bearer_token(token) or token.strip()  # a header's whole value, or the token alone
        return await verified_claims(self.jwt_verifier(), raw)
