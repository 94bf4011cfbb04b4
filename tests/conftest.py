"""Shared test fixtures: one real local Ray cluster for the session, real files under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

_world_env: dict[str, str] = {}

# The runtime's lifecycle settings for the whole suite (driver and Ray workers alike): one host per storage
# root (tests that need more write the root's placement file first), agents that hibernate after a while,
# and hosts that exit soon after their last agent left, so the suite's many storage roots do not pile up
# host processes.
RUNTIME_TEST_ENV = {"AGENT_HOSTS": "1", "AGENT_IDLE_SECONDS": "15", "AGENT_HOST_IDLE_SECONDS": "5"}
for _name, _value in RUNTIME_TEST_ENV.items():
    os.environ.setdefault(_name, _value)


def set_world_env(env: dict[str, str]) -> None:
    """Give the Ray job these env vars (the dev services' URLs and secrets); restarts Ray if it runs."""
    import ray

    _world_env.clear()
    _world_env.update(env)
    if ray.is_initialized():
        ray.shutdown()
    start_ray()


def ray_init_kwargs() -> dict:
    """How tests start Ray: 2 CPUs, no dashboard, and the repo importable by workers (for tests.*)."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "num_cpus": 2,
        "include_dashboard": False,
        "logging_level": "WARNING",
        "namespace": "agents-tests",
        "runtime_env": {
            "env_vars": {"PYTHONPATH": pythonpath, **{k: os.environ[k] for k in RUNTIME_TEST_ENV}, **_world_env}
        },
    }


def start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs())


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster shared by the session (tests that restart it leave it running)."""
    import ray

    start_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def chat_world(ray_cluster: None) -> Iterator[object]:
    """The dev authorization server, checkout API and offline model on 127.0.0.1, with Ray configured for them."""
    from tests.chat_world import start_world

    world = start_world()
    yield world
    world.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A throwaway PostgreSQL server for the session (tests/postgres.py); tests keep to classes of their own."""
    from tests.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    """A fresh storage root per test, so each test has its own agents' files and alarm scheduler."""
    root = tmp_path / "agents"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def issuer() -> Iterator[object]:
    """A tiny issuer (tests/jwks_helpers.py) whose JWKS the checkout API trusts; it mints test tokens."""
    from tests.jwks_helpers import JWKSServer

    with JWKSServer() as server:
        yield server


@pytest.fixture(scope="module")
def checkout(issuer: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real checkout API on 127.0.0.1 trusting `issuer`, with its orders in a SQLite file."""
    from devservers.checkout_api import CheckoutServer
    from tests.jwks_helpers import CHECKOUT_AUDIENCE

    db = tmp_path_factory.mktemp("checkout") / "orders.db"
    with CheckoutServer(
        issuer=issuer.issuer,
        audience=CHECKOUT_AUDIENCE,
        jwks_url=issuer.jwks_url,
        db_path=db,  # type: ignore[attr-defined]
    ) as server:
        yield server
