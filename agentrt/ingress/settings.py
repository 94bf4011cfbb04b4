"""The ingress's own configuration, read from the Serve replica's environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_BODY_BYTES = 64 * 1024


class IngressSettings(BaseSettings):
    """The ingress's own configuration (environment of the Serve replicas)."""

    model_config = SettingsConfigDict(extra="ignore")

    dev_authz_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTRT_DEV_AUTHZ_URL"),
        description="Base URL of the dev authorization server (enables demo sign-in on the page).",
    )
    approvals_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTRT_APPROVALS_URL"),
        description="Where users approve requests (default: the dev server's /approvals page).",
    )
    agent_class: str = Field(
        default="agents.chat:Chat",
        validation_alias=AliasChoices("AGENTRT_AGENT_CLASS"),
        description="The thread agent served (`module:Class`, a `ThreadAgent` subclass).",
    )
    allowed_hosts: str = Field(
        default="",
        validation_alias=AliasChoices("AGENTRT_ALLOWED_HOSTS"),
        description=(
            "With the dev sign-in on, the host names (comma-separated) the API answers besides this machine's "
            "loopback names; '*' for any (`agentrt serve --insecure-dev-login`). Others get 421: no DNS rebinding."
        ),
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1, validation_alias=AliasChoices("AGENTRT_MAX_BODY_BYTES")
    )
    max_chat_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        validation_alias=AliasChoices("AGENTRT_MAX_CHAT_BODY_BYTES"),
        description=(
            "The body limit of `POST /api/chat`: the AI SDK's transport sends the client's whole history with "
            "each message (only the last one is read)."
        ),
    )
    poll_timeout: float = Field(default=20.0, validation_alias=AliasChoices("AGENTRT_POLL_TIMEOUT"))
    sse_ping_seconds: float = Field(default=15.0, validation_alias=AliasChoices("AGENTRT_SSE_PING_SECONDS"))
    max_streams_per_user: int = Field(
        default=20,
        ge=1,
        validation_alias=AliasChoices("AGENTRT_MAX_STREAMS_PER_USER"),
        description="Open event streams one user may hold on a replica; the next is refused with 429.",
    )
    max_streams_per_thread: int = Field(
        default=10,
        ge=1,
        validation_alias=AliasChoices("AGENTRT_MAX_STREAMS_PER_THREAD"),
        description="Open event streams on one thread per replica; the next is refused with 429.",
    )
    max_turns_per_minute: int = Field(
        default=30,
        ge=1,
        validation_alias=AliasChoices("AGENTRT_MAX_TURNS_PER_MINUTE"),
        description="Turns (messages, tool results) one user may start per minute per replica; then 429.",
    )
    max_concurrent_turns: int = Field(
        default=4,
        ge=1,
        validation_alias=AliasChoices("AGENTRT_MAX_CONCURRENT_TURNS"),
        description="Turns of one user running at once per replica; the next is refused with 429.",
    )
    max_threads_per_user: int = Field(
        default=1000,
        ge=1,
        validation_alias=AliasChoices("AGENT_MAX_THREADS_PER_USER"),
        description="Threads one user may create; the next is refused with 429.",
    )

    def other_hosts(self) -> frozenset[str]:
        """`allowed_hosts` as lower-cased names."""
        return frozenset(name.strip().lower() for name in self.allowed_hosts.split(",") if name.strip())

    def dev_base(self) -> str | None:
        return self.dev_authz_url.rstrip("/") if self.dev_authz_url else None

    def approval_page(self) -> str | None:
        """Where users approve requests: `approvals_url`, else the dev server's approval page, else None."""
        dev = self.dev_base()
        return self.approvals_url or (f"{dev}/approvals" if dev else None)


@lru_cache(maxsize=1)
def ingress_settings() -> IngressSettings:
    """The replica's settings, read once."""
    return IngressSettings()


async def settings_dependency() -> IngressSettings:
    """`ingress_settings()` as a FastAPI dependency. Async on purpose: FastAPI runs a plain `def`
    dependency in its thread pool, a thread hop on every request for a cached value."""
    return ingress_settings()
