"""`AuthSettings`: env names, issuer derivation, and checks that name the variable but never the secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from auth.settings import AuthConfigError, AuthSettings
from tools.ciba.client import CIBAClient

SECRET = "client-secret-value-0123456789"
KEY = "f" * 64


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> AuthSettings:
    for name in (
        "AUTH0_DOMAIN",
        "AUTH0_CLIENT_ID",
        "AUTH0_CLIENT_SECRET",
        "AUTH0_AUDIENCE",
        "AUTH0_SESSION_ENCRYPTION_KEY",
        "AUTH_ISSUER",
        "CIBA_CLIENT_AUTH_METHOD",
        "CIBA_LOGIN_HINT_FORMAT",
        "CHECKOUT_AUDIENCE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AuthSettings()


def test_complete_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        AUTH0_DOMAIN="tenant.us.auth0.com",
        AUTH0_CLIENT_ID="cid",
        AUTH0_CLIENT_SECRET=SECRET,
        AUTH0_AUDIENCE="https://agents/api",
        AUTH0_SESSION_ENCRYPTION_KEY=KEY,
        CIBA_CLIENT_AUTH_METHOD="client_secret_basic",
    )
    assert s.validate_for_ciba() is s
    assert s.issuer == "https://tenant.us.auth0.com/"
    assert s.discovery_url == "https://tenant.us.auth0.com/.well-known/openid-configuration"
    assert s.require_api_audience() == "https://agents/api"
    assert s.checkout_audience == "http://localhost:5000/api/checkout"
    assert s.ciba_login_hint_format == "iss_sub"
    client = CIBAClient.from_settings(s)
    assert client.auth_method == "client_secret_basic" and client.client_id == "cid"
    for text in (repr(s), str(s), repr(client), str(s.model_dump())):
        assert SECRET not in text and KEY not in text


def test_auth_issuer_overrides_the_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, AUTH0_DOMAIN="tenant.auth0.com", AUTH_ISSUER=" http://127.0.0.1:8400/ ")
    assert s.issuer == "http://127.0.0.1:8400/"
    assert settings(monkeypatch, AUTH0_DOMAIN="https://tenant.auth0.com/").issuer == "https://tenant.auth0.com/"


def test_missing_and_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, AUTH0_CLIENT_SECRET=SECRET, AUTH0_SESSION_ENCRYPTION_KEY="short")
    with pytest.raises(AuthConfigError) as caught:
        s.validate_for_ciba()
    message = str(caught.value)
    assert "AUTH0_DOMAIN" in message and "AUTH0_CLIENT_ID" in message
    assert "AUTH0_SESSION_ENCRYPTION_KEY is too short" in message
    assert "AUTH0_CLIENT_SECRET" not in message and SECRET not in message
    with pytest.raises(AuthConfigError, match="AUTH0_AUDIENCE"):
        s.require_api_audience()
    with pytest.raises(AuthConfigError, match="AUTH_ISSUER"):
        _ = settings(monkeypatch, AUTH_ISSUER="tenant.auth0.com").issuer


def test_invalid_choices_fail_without_echoing_input(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(monkeypatch, CIBA_CLIENT_AUTH_METHOD="tls_client_auth", AUTH0_CLIENT_SECRET=SECRET)
    assert "CIBA_CLIENT_AUTH_METHOD" in str(caught.value) and SECRET not in str(caught.value)
    with pytest.raises(ValidationError):
        settings(monkeypatch, CIBA_LOGIN_HINT_FORMAT="email")


@pytest.mark.parametrize("issuer", ["http://idp.example.com/", "http://10.0.0.5:8080/", "http://localhost.evil.com/"])
def test_a_plain_http_issuer_is_refused_unless_it_is_on_this_machine(
    monkeypatch: pytest.MonkeyPatch, issuer: str
) -> None:
    """The client secret and every token go to the issuer: plain HTTP only for a loopback dev server."""
    with pytest.raises(AuthConfigError, match="https"):
        _ = settings(monkeypatch, AUTH_ISSUER=issuer).issuer
    for loopback in ("http://127.0.0.1:8400/", "http://localhost:8400/", "http://[::1]:8400/"):
        assert settings(monkeypatch, AUTH_ISSUER=loopback).issuer == loopback


def test_the_checkout_audience_must_not_be_the_apis_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise a login token carrying `stock:buy` could be spent at checkout without any CIBA approval."""
    s = settings(
        monkeypatch,
        AUTH0_DOMAIN="tenant.us.auth0.com",
        AUTH0_CLIENT_ID="cid",
        AUTH0_CLIENT_SECRET=SECRET,
        AUTH0_AUDIENCE="https://agents/api",
        AUTH0_SESSION_ENCRYPTION_KEY=KEY,
        CHECKOUT_AUDIENCE="https://agents/api",
    )
    with pytest.raises(AuthConfigError, match="CHECKOUT_AUDIENCE must differ from AUTH0_AUDIENCE"):
        s.validate_for_ciba()
