"""Shared test fixtures: one real local Ray cluster for the session, real files under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def ray_init_kwargs() -> dict:
    """How tests start Ray: 2 CPUs, no dashboard, and the repo importable by workers (for tests.*)."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "num_cpus": 2,
        "include_dashboard": False,
        "logging_level": "WARNING",
        "namespace": "agents-tests",
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
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


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    """A fresh storage root per test, so each test has its own agents' files and alarm scheduler."""
    root = tmp_path / "agents"
    root.mkdir()
    return root
