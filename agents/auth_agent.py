"""`AuthAgent`: every call carries the caller's bearer JWT, verified before the agent does anything.

Verification is against the configured issuer's JWKS (OIDC discovery, cached, refreshed on an unknown
`kid`), checking signature, `iss`, `aud` (`AUTH0_AUDIENCE`), `exp`/`nbf`, with an asymmetric-only
algorithm allow-list, so `alg: none` and HS256-signed-with-the-public-key tokens are refused.
"""

from __future__ import annotations

from typing import Any

from agents.errors import AuthUnavailableError, UnauthenticatedError
from agents.host import MixinBase
from auth.settings import AuthSettings
from auth.verifier import InvalidTokenError, JWTVerifier, SigningKeysUnavailableError
from runtime import internal


class AuthAgent(MixinBase):
    """Mixin for an `AIChatAgent`: `authenticate(token)` verifies the JWT and returns its claims.

    The verifier (and its JWKS cache) is the host process's shared one, so activating a thread costs no
    discovery or JWKS round trip once any agent of the process has fetched them.
    """

    _jwt_verifier: JWTVerifier | None = None

    def jwt_verifier(self) -> JWTVerifier:
        if self._jwt_verifier is None:
            self._jwt_verifier = AuthSettings().shared_verifier()
        return self._jwt_verifier

    @internal
    async def authenticate(self, token: str | None) -> dict[str, Any]:
        if not isinstance(token, str) or not token.strip():
            raise UnauthenticatedError("a bearer token is required")
        raw = token.strip()
        if raw[:7].lower() == "bearer ":
            raw = raw[7:].strip()
        try:
            return await self.jwt_verifier().verify(raw)
        except SigningKeysUnavailableError:  # the issuer is down, the token may be fine: retry, not 401
            raise AuthUnavailableError("the issuer's signing keys cannot be fetched; retry shortly") from None
        except InvalidTokenError as exc:
            raise UnauthenticatedError(f"invalid token: {exc}") from None
