"""Runtime configuration from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Where agents keep their files and which Ray namespace holds their actors."""

    model_config = SettingsConfigDict(env_prefix="AGENT_", extra="ignore")

    storage_dir: Path = Field(default=Path("./.data"), description="Root folder of the agents' SQLite files.")
    namespace: str = Field(default="agents", description="Ray namespace of the named agent actors.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite `synchronous` pragma: FULL survives power loss, NORMAL only process crashes.",
    )
    max_concurrency: int = Field(default=100, ge=2, description="Concurrent calls one agent actor accepts.")


@lru_cache(maxsize=1)
def runtime_settings() -> RuntimeSettings:
    """The settings read once per process."""
    return RuntimeSettings()
