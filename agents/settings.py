"""Chat agent configuration from the environment (`OPENAI_*`, `CHAT_*`).

Read inside the agent's own process, so a Ray cluster passes it with the job's `runtime_env` env vars
the same way it passes `AUTH0_*`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

OverlapPolicy = Literal["queue", "reject", "interrupt"]
"""What a message sent while the thread is answering another does ("double texting"): waits its turn
(`queue`), is refused with 409 (`reject`), or stops the answer under way and then runs (`interrupt`)."""

DEFAULT_MAX_MESSAGE_CHARS = 8000
"""`CHAT_MAX_MESSAGE_CHARS` unless set (the API schema shows this default)."""


class ChatSettings(BaseSettings):
    """Which model the chat agent talks to, and its limits."""

    model_config = SettingsConfigDict(extra="ignore")

    openai_base_url: str | None = Field(default=None, validation_alias=AliasChoices("OPENAI_BASE_URL"))
    openai_api_key: SecretStr = Field(default=SecretStr("offline"), validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_model: str = Field(default="offline-demo-model", validation_alias=AliasChoices("OPENAI_MODEL"))
    openai_timeout: float = Field(default=60.0, validation_alias=AliasChoices("OPENAI_TIMEOUT"))
    max_steps: int = Field(default=5, ge=1, le=50, validation_alias=AliasChoices("CHAT_MAX_STEPS"))
    max_message_chars: int = Field(
        default=DEFAULT_MAX_MESSAGE_CHARS, ge=1, validation_alias=AliasChoices("CHAT_MAX_MESSAGE_CHARS")
    )
    max_tool_calls_per_step: int = Field(
        default=4,
        ge=1,
        validation_alias=AliasChoices("CHAT_MAX_TOOL_CALLS_PER_STEP"),
        description="Tool calls run from one model answer; the rest are answered 'not run' (the model is told).",
    )
    max_pending_approvals_per_user: int = Field(
        default=5,
        ge=1,
        validation_alias=AliasChoices("CHAT_MAX_PENDING_APPROVALS_PER_USER"),
        description="Approvals one user may have waiting on their device across all their threads.",
    )
    max_pending_approvals_per_thread: int = Field(
        default=3,
        ge=1,
        validation_alias=AliasChoices("CHAT_MAX_PENDING_APPROVALS_PER_THREAD"),
        description="Approvals one thread may have waiting on the user's device; a new one is refused until one ends.",
    )
    context_budget_chars: int = Field(
        default=48_000,
        ge=2_000,
        validation_alias=AliasChoices("CHAT_CONTEXT_BUDGET_CHARS"),
        description="The most one model request carries, in characters of its JSON (about 3-4 per token): the "
        "system prompt, the summary, the tools and the newest turns that fit (see agents.model_context).",
    )
    compact_after_chars: int = Field(
        default=12_000,
        ge=500,
        validation_alias=AliasChoices("CHAT_COMPACT_AFTER_CHARS"),
        description="Once this much of the thread is out of the model's window and not summarized, a "
        "compaction step folds it into the thread's summary (see agents.compaction).",
    )
    summary_max_chars: int = Field(
        default=4_000,
        ge=200,
        validation_alias=AliasChoices("CHAT_SUMMARY_MAX_CHARS"),
        description="The longest summary the model is asked for (and kept).",
    )
    overlapping_messages: OverlapPolicy = Field(
        default="queue",
        validation_alias=AliasChoices("CHAT_OVERLAPPING_MESSAGES"),
        description="A message sent while the thread answers another: `queue` (waits), `reject` (409) or "
        "`interrupt` (stops the answer under way, then runs). A class's `overlapping_messages` wins.",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("CHAT_RETENTION_DAYS"),
        description="Delete a thread (and its place in its owner's list) once it has been idle this many days "
        "(fractions allowed); unset: threads are kept until deleted. A class's `retention_days` wins.",
    )
    system_prompt: str = Field(
        default=(
            "You are a helpful stock trading assistant. Use get_stock_price to look up prices and buy_stock to "
            "buy shares. Purchases need the user's approval on their device; when a tool says approval is "
            "pending, tell the user and do not call the tool again."
        ),
        validation_alias=AliasChoices("CHAT_SYSTEM_PROMPT"),
    )


@lru_cache(maxsize=1)
def chat_settings() -> ChatSettings:
    return ChatSettings()
