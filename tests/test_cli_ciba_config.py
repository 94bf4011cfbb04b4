"""`agentrt serve` refuses to start, at once and saying what to fix, when its CIBA client cannot
authenticate (issue 9: a wrong private_key_jwt key is a configuration error at start-up, never a hang)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from auth.client_assertion import ClientAssertionSigner, generate_private_key_pem
from devservers.authz_server import DevAuthorizationServer
from tests.test_cli import clean_env, run_cli

pytestmark = pytest.mark.slow


def serve_args(tmp_path: Path) -> list[str]:
    return ["serve", "--port", "0", "--storage-dir", str(tmp_path / "data"), "--num-cpus", "1"]


def test_an_unreadable_key_is_named_and_nothing_starts(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    env.update(CIBA_CLIENT_AUTH_METHOD="private_key_jwt", CIBA_CLIENT_ASSERTION_KEY_FILE=str(tmp_path / "bad.pem"))
    started = time.monotonic()
    result = run_cli(serve_args(tmp_path), env, timeout=60)
    assert result.returncode != 0
    assert "CIBA_CLIENT_ASSERTION_KEY_FILE is not a usable private key" in result.stdout + result.stderr
    assert "not a key" not in result.stdout + result.stderr
    assert time.monotonic() - started < 30


def test_a_key_the_provider_does_not_know_is_refused_at_start_up(tmp_path: Path) -> None:
    registered = ClientAssertionSigner("pkj-agent", generate_private_key_pem())
    with DevAuthorizationServer(
        api_audience="urn:test:api", client_keys={"pkj-agent": registered.public_key_pem()}
    ) as provider:
        (tmp_path / "other.pem").write_bytes(generate_private_key_pem())
        env = clean_env(tmp_path)
        env.update(
            AUTH_ISSUER=provider.issuer,
            AUTH0_CLIENT_ID="pkj-agent",
            AUTH0_AUDIENCE="urn:test:api",
            CIBA_CLIENT_AUTH_METHOD="private_key_jwt",
            CIBA_CLIENT_ASSERTION_KEY_FILE=str(tmp_path / "other.pem"),
        )
        result = run_cli(serve_args(tmp_path), env, timeout=60)
    assert result.returncode != 0
    assert "refused the CIBA client (invalid_client)" in result.stdout + result.stderr
