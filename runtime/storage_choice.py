"""Which backend keeps an agent's storage: one SQLite file per agent under the storage root (the embedded
default), or PostgreSQL when `AGENT_STORAGE_URL` names a database (clusters). The rest of the runtime asks
here, never decides by itself.

A storage URL is a secret (it may carry a password): what is shown of it anywhere is `redacted_url()`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from runtime.settings import runtime_settings
from runtime.storage import AgentStorage
from runtime.storage_api import StorageAPI, StorageError

POSTGRES_SCHEMES = ("postgresql", "postgres")
SHARED_CLASS = "_shared"
"""The class name the stores a root shares use in the database (no agent class can be named so)."""


class StorageConfigError(StorageError):
    """`AGENT_STORAGE_URL` is malformed, or its database cannot be used (the message names the setting and
    shows the URL without its password)."""


def redacted_url(url: str) -> str:
    """`url` with its password as `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def storage_url() -> str | None:
    """The configured PostgreSQL URL (checked), or None for SQLite files."""
    secret = runtime_settings().storage_url
    url = secret.get_secret_value().strip() if secret is not None else ""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise StorageConfigError("AGENT_STORAGE_URL is not a valid URL") from None
    if parts.scheme not in POSTGRES_SCHEMES or not parts.hostname or not parts.path.strip("/"):
        raise StorageConfigError(
            f"AGENT_STORAGE_URL must be postgresql://user:password@host:5432/database, not {redacted_url(url)!r}"
        )
    return url


def agent_storage(class_name: str, agent_id: str, storage_dir: Path) -> StorageAPI:
    """The (unopened) storage of agent `class_name/agent_id`."""
    url = storage_url()
    if url is not None:
        from runtime.storage_pg import PostgresAgentStorage

        return PostgresAgentStorage(url, class_name, agent_id, pool_size=runtime_settings().storage_pool_size)
    settings = runtime_settings()
    return AgentStorage(
        sqlite_path(storage_dir, class_name, agent_id),
        synchronous=settings.sqlite_synchronous,
        journal=settings.sqlite_journal,
    )


def shared_storage(name: str, sqlite_file: Path) -> StorageAPI:
    """The (unopened) storage of something a whole root shares, not an agent's own (the alarm index, the
    users' approval slots): the SQLite file `sqlite_file` (placed where no agent id can name it), or the
    rows of `name` in the database. Its write transactions are serialized across processes on both."""
    url = storage_url()
    if url is not None:
        from runtime.storage_pg import PostgresAgentStorage

        return PostgresAgentStorage(url, SHARED_CLASS, name, pool_size=runtime_settings().storage_pool_size)
    return AgentStorage(sqlite_file, synchronous="NORMAL")


def sqlite_path(storage_dir: Path, class_name: str, agent_id: str) -> Path:
    """Where the SQLite backend keeps an agent's file."""
    return Path(storage_dir) / class_name / f"{agent_id}.sqlite3"


async def agent_exists(class_name: str, agent_id: str, storage_dir: Path) -> bool:
    """Whether the agent was ever created (its file, or its row), without creating anything."""
    url = storage_url()
    if url is None:
        return sqlite_path(storage_dir, class_name, agent_id).exists()
    from runtime.storage_pg import PostgresAgentStorage

    storage = PostgresAgentStorage(url, class_name, agent_id, pool_size=runtime_settings().storage_pool_size)
    await storage.open()
    return await storage.exists()


def check_storage() -> None:
    """Refuse, naming `AGENT_STORAGE_URL`, a URL that is malformed or whose database does not answer (at
    start-up, so that nothing half-starts)."""
    url = storage_url()
    if url is None:
        return
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = type(exc).__name__
        raise StorageConfigError(
            f"AGENT_STORAGE_URL ({redacted_url(url)}): the database cannot be used ({reason})"
        ) from None
