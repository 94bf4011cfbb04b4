"""Authorization settings from the environment (`AUTH0_*`, `AUTH_ISSUER`, `CIBA_*`, `CHECKOUT_AUDIENCE`).

Read inside each agent's own process (a Ray cluster passes them through the job's `runtime_env`), so the
settings are a plain pydantic-settings model rather than a global. Secrets are `SecretStr`: they never show
up in a repr, a log line or a validation error, and `AuthConfigError` only ever names the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from auth.client_assertion import ClientAssertionSigner
from auth.errors import AuthConfigError
from auth.issuer import discovery_url, issuer_url
from auth.verifier import JWTVerifier, shared_verifier

ClientAuthMethod = Literal["client_secret_post", "client_secret_basic", "private_key_jwt"]
LoginHintFormat = Literal["iss_sub", "plain"]

#: The smallest accepted `AUTH0_SESSION_ENCRYPTION_KEY` (characters). `openssl rand -hex 32` gives 64.
MIN_ENCRYPTION_KEY_CHARS = 32

DEFAULT_CHECKOUT_AUDIENCE = "http://localhost:5000/api/checkout"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class AuthSettings(BaseSettings):
    """Where the authorization server is, who this client is, and how to talk CIBA to it.

    The issuer is `AUTH_ISSUER` when set (any OIDC provider, or the embedded dev server), otherwise
    `https://{AUTH0_DOMAIN}/` as Auth0 spells it. Nothing is required at construction time, so a process
    that never uses CIBA can still read the settings; call `validate_for_ciba()` (or the `require_*`
    helpers) where a value is actually needed, to fail early with a message naming the variable.
    """

    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)

    auth0_domain: str | None = Field(default=None, validation_alias=_env("AUTH0_DOMAIN"))
    auth0_client_id: str | None = Field(default=None, validation_alias=_env("AUTH0_CLIENT_ID"))
    auth0_client_secret: SecretStr | None = Field(default=None, validation_alias=_env("AUTH0_CLIENT_SECRET"))
    auth0_audience: str | None = Field(default=None, validation_alias=_env("AUTH0_AUDIENCE"))
    auth0_session_encryption_key: SecretStr | None = Field(
        default=None, validation_alias=_env("AUTH0_SESSION_ENCRYPTION_KEY")
    )
    auth_issuer: str | None = Field(default=None, validation_alias=_env("AUTH_ISSUER"))
    ciba_client_auth_method: ClientAuthMethod = Field(
        default="client_secret_post", validation_alias=_env("CIBA_CLIENT_AUTH_METHOD")
    )
    ciba_client_assertion_key: SecretStr | None = Field(
        default=None, validation_alias=_env("CIBA_CLIENT_ASSERTION_KEY")
    )
    """private_key_jwt: the client's private key, PEM text (or see the `_FILE` variant)."""
    ciba_client_assertion_key_file: Path | None = Field(
        default=None, validation_alias=_env("CIBA_CLIENT_ASSERTION_KEY_FILE")
    )
    ciba_client_assertion_kid: str | None = Field(default=None, validation_alias=_env("CIBA_CLIENT_ASSERTION_KID"))
    ciba_delivery_mode: Literal["poll", "ping"] = Field(default="poll", validation_alias=_env("CIBA_DELIVERY_MODE"))
    """ping: the provider notifies the ingress's `/ciba/notify` when the user decided (poll stays the fallback)."""
    ciba_ping_fallback_seconds: float | None = Field(
        default=None, ge=1.0, validation_alias=_env("CIBA_PING_FALLBACK_SECONDS")
    )
    """ping mode: seconds between checks on a timer, in case a ping is lost; unset: a few per request (its
    lifetime / `PING_CHECKS_PER_REQUEST`), so a waiting thread can sleep between them."""
    ciba_login_hint_format: LoginHintFormat = Field(default="iss_sub", validation_alias=_env("CIBA_LOGIN_HINT_FORMAT"))
    checkout_audience: str = Field(default=DEFAULT_CHECKOUT_AUDIENCE, validation_alias=_env("CHECKOUT_AUDIENCE"))
    auth_verified_token_seconds: float = Field(
        default=60.0, ge=0.0, validation_alias=_env("AUTH_VERIFIED_TOKEN_SECONDS")
    )
    """How long a process accepts a token it verified without checking its signature again (0: never)."""

    def shared_verifier(self) -> JWTVerifier:
        """The process's verifier for the agent API's tokens (`AUTH0_AUDIENCE`)."""
        return shared_verifier(self.issuer, self.require_api_audience(), self.auth_verified_token_seconds)

    # -- derived values ------------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        """The issuer URL: `AUTH_ISSUER` verbatim, else `https://{AUTH0_DOMAIN}/` (see `auth.issuer`)."""
        return issuer_url(self.auth_issuer, self.auth0_domain)

    @property
    def issuer_if_set(self) -> str | None:
        """`issuer`, or None while neither `AUTH_ISSUER` nor `AUTH0_DOMAIN` gives a usable one."""
        try:
            return self.issuer
        except AuthConfigError:
            return None

    @property
    def discovery_url(self) -> str:
        """The OIDC discovery document of `issuer`."""
        return discovery_url(self.issuer)

    # -- checks --------------------------------------------------------------------------------------
    def require_client_id(self) -> str:
        if not self.auth0_client_id or not self.auth0_client_id.strip():
            raise AuthConfigError("set AUTH0_CLIENT_ID (the CIBA client's id)")
        return self.auth0_client_id.strip()

    def require_client_secret(self) -> SecretStr:
        if self.auth0_client_secret is None or not self.auth0_client_secret.get_secret_value():
            raise AuthConfigError("set AUTH0_CLIENT_SECRET (the CIBA client's secret)")
        return self.auth0_client_secret

    @property
    def uses_client_secret(self) -> bool:
        return self.ciba_client_auth_method != "private_key_jwt"

    def require_assertion_signer(self) -> ClientAssertionSigner:
        """private_key_jwt: the signer of the client's assertions, from `CIBA_CLIENT_ASSERTION_KEY_FILE` or
        `CIBA_CLIENT_ASSERTION_KEY` (an unreadable or unusable key is an `AuthConfigError` at once)."""
        client_id = self.require_client_id()
        if self.ciba_client_assertion_key_file is not None:
            try:
                pem = Path(self.ciba_client_assertion_key_file).read_bytes()
            except OSError:
                raise AuthConfigError("CIBA_CLIENT_ASSERTION_KEY_FILE cannot be read") from None
            source = "CIBA_CLIENT_ASSERTION_KEY_FILE"
        elif self.ciba_client_assertion_key is not None and self.ciba_client_assertion_key.get_secret_value():
            pem = self.ciba_client_assertion_key.get_secret_value().encode()
            source = "CIBA_CLIENT_ASSERTION_KEY"
        else:
            raise AuthConfigError(
                "set CIBA_CLIENT_ASSERTION_KEY_FILE (or CIBA_CLIENT_ASSERTION_KEY) for private_key_jwt"
            )
        try:
            return ClientAssertionSigner(client_id, pem, kid=self.ciba_client_assertion_kid or None)
        except ValueError as exc:
            raise AuthConfigError(f"{source} is not a usable private key ({exc})") from None

    def require_api_audience(self) -> str:
        """`AUTH0_AUDIENCE`: the audience of the tokens callers present to the agent API."""
        if not self.auth0_audience or not self.auth0_audience.strip():
            raise AuthConfigError("set AUTH0_AUDIENCE (the agent API's audience)")
        return self.auth0_audience.strip()

    def require_encryption_key(self) -> SecretStr:
        """`AUTH0_SESSION_ENCRYPTION_KEY`, the secret the credential store derives its AES key from."""
        key = self.auth0_session_encryption_key
        if key is None or not key.get_secret_value():
            raise AuthConfigError("set AUTH0_SESSION_ENCRYPTION_KEY (e.g. the output of `openssl rand -hex 32`)")
        if len(key.get_secret_value()) < MIN_ENCRYPTION_KEY_CHARS:
            raise AuthConfigError(
                f"AUTH0_SESSION_ENCRYPTION_KEY is too short (at least {MIN_ENCRYPTION_KEY_CHARS} characters)"
            )
        return key

    def validate_for_ciba(self) -> AuthSettings:
        """Fail with one `AuthConfigError` listing every missing or bad variable CIBA needs; return self."""
        problems: list[str] = []
        for check in (
            lambda: self.issuer,
            self.require_client_id,
            self.require_client_secret if self.uses_client_secret else self.require_assertion_signer,
            self.require_encryption_key,
        ):
            try:
                check()
            except AuthConfigError as exc:
                problems.append(str(exc))
        if not self.checkout_audience or not self.checkout_audience.strip():
            problems.append("CHECKOUT_AUDIENCE must not be empty")
        elif self.auth0_audience and self.checkout_audience.strip() == self.auth0_audience.strip():
            # a login token for this API would then also be a purchase token: CIBA would be bypassed
            problems.append("CHECKOUT_AUDIENCE must differ from AUTH0_AUDIENCE")
        if problems:
            raise AuthConfigError("CIBA is not configured: " + "; ".join(problems))
        return self


_READ_FROM = ("AUTH", "CIBA_", "CHECKOUT_AUDIENCE")
"""The prefixes of every variable `AuthSettings` reads."""
_last: tuple[tuple[tuple[str, str], ...], AuthSettings] | None = None


def auth_settings() -> AuthSettings:
    """The process's `AuthSettings`, read again only when one of its variables changed. Agents ask for them
    on every activation; reading the environment through pydantic-settings costs about as much as the rest
    of an activation."""
    global _last
    seen = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_READ_FROM)))
    if _last is None or _last[0] != seen:
        _last = (seen, AuthSettings())
    return _last[1]
