"""Runtime configuration from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Where agents keep their files, which Ray namespace holds their hosts, and how long agents stay live."""

    model_config = SettingsConfigDict(env_prefix="AGENT_", extra="ignore")

    storage_dir: Path = Field(default=Path("./.data"), description="Root folder of the agents' SQLite files.")
    storage_url: SecretStr | None = Field(
        default=None,
        description="A PostgreSQL URL (postgresql://user:password@host:5432/db): every agent's storage in that "
        "database, for clusters (`runtime.storage_pg`). Unset: one SQLite file per agent under storage_dir. "
        "Secret: shown as ***, its password never printed.",
    )
    storage_pool_size: int = Field(
        default=10, ge=1, le=1000, description="PostgreSQL connections per host process (and per ingress replica)."
    )
    namespace: str = Field(default="agents", description="Ray namespace of the agent hosts and the scheduler.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite `synchronous` pragma: FULL survives power loss, NORMAL only process crashes.",
    )
    sqlite_journal: Literal["wal", "delete"] = Field(
        default="wal",
        description="SQLite journal: WAL (readers never wait for the writer), or a rollback journal for "
        "filesystems that cannot mmap WAL's shared-memory file.",
    )
    hosts: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="Host processes agents are spread over (per storage root). Fixed when the root is first used.",
    )
    idle_seconds: float = Field(
        default=60.0,
        ge=0,
        description="An agent with nothing to do for this long hibernates (leaves memory); 0 disables.",
    )
    max_live: int = Field(
        default=2000,
        ge=1,
        description="Live agents per storage root (split evenly over the hosts); the least recently used idle "
        "ones hibernate early to stay under it.",
    )
    activation_timeout: float = Field(
        default=10.0,
        gt=0,
        description="How long a new activation waits for room when every live agent is busy, before "
        "`AgentCapacityError` (HTTP 503 with Retry-After).",
    )
    host_idle_seconds: float = Field(
        default=600.0,
        ge=0,
        description="A host with no live agent for this long exits (and is started again on demand); 0: never.",
    )
    alarm_probes: bool = Field(
        default=True,
        description="Whether a sleeping agent's alarm may carry a probe the scheduler runs instead of waking it "
        "(`runtime.alarm_probes`); off: every alarm wakes its agent (for comparison, or to rule the probes out).",
    )
    scheduler_max_wakes: int = Field(
        default=32,
        ge=1,
        description="Wake-ups the alarm scheduler runs at once: after a restart with a backlog of overdue "
        "alarms, agents are woken at the pace the hosts take them (backpressure), not all at once.",
    )
    host_max_concurrency: int = Field(
        default=10_000, ge=2, description="Concurrent calls one host accepts (open event streams count)."
    )
    host_cpus: float = Field(
        default=0.0,
        ge=0,
        description="CPUs each host reserves from Ray. 0 (one machine): hosts take no core from Ray's "
        "accounting. On a cluster, 1: a host is one event loop, about one core of agent work, and Ray then "
        "places the hosts where cores are free, over the nodes.",
    )
    host_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Ray custom resources each host needs (JSON, e.g. {"agents": 0.01}): keeps the hosts on '
        "the nodes that offer them (and, when such a node is lost, restarts them on another that does).",
    )
    scheduler_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources the root's runtime actor (the alarm scheduler and placement keeper) "
        'needs (JSON, e.g. {"runtime": 0.01}): keeps it on the nodes that offer them; unset, it goes where Ray '
        "puts it and, when its node is lost, Ray restarts it elsewhere (the hosts wait for it meanwhile).",
    )


@lru_cache(maxsize=1)
def runtime_settings() -> RuntimeSettings:
    """The settings read once per process."""
    return RuntimeSettings()
