"""A thread's approved credentials and pending CIBA records in the thread's own storage.

The same `CredentialStore` as `SQLiteCredentialStore` (the same AES-256-GCM sealing, TTLs and atomic
`create_if_absent`), kept in the agent's `self.storage` instead of a file of its own, so that:

- it works on either storage backend (one SQLite file per agent, or PostgreSQL for clusters), and
- every write to it is fenced like the agent's other writes: an activation that a newer one replaced
  (a cut-off node still running) can neither record a CIBA request nor spend an approval
  (`StaleActivationError`, nothing written).
"""

from __future__ import annotations

import time
from typing import Any

from runtime.storage_api import StorageAPI
from tools.ciba.credential_store import CredentialSealer, EncryptionKey, expiry_time

CREDENTIALS_MIGRATIONS = [
    """
    CREATE TABLE _credentials (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, key)
    );
    """
]

_CREATE_IF_ABSENT = (
    "INSERT INTO _credentials (namespace, key, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, "
    "updated_at = excluded.updated_at WHERE _credentials.expires_at IS NOT NULL AND _credentials.expires_at <= ?"
)


class AgentCredentialStore:
    """A `CredentialStore` in an agent's storage (see the module docstring); expired rows read as None and
    are deleted when met."""

    def __init__(self, storage: StorageAPI, encryption_key: EncryptionKey) -> None:
        self.storage = storage
        self._sealer = CredentialSealer(encryption_key)
        self._ready = False

    def __repr__(self) -> str:
        return "AgentCredentialStore()"

    async def _prepared(self) -> StorageAPI:
        if not self._ready:
            await self.storage.migrate("tools.AgentCredentialStore", CREDENTIALS_MIGRATIONS)
            self._ready = True
        return self.storage

    async def get(self, namespace: str, key: str) -> Any | None:
        storage = await self._prepared()
        row = await storage.fetchone(
            "SELECT value, expires_at FROM _credentials WHERE namespace = ? AND key = ?", (namespace, key)
        )
        if row is None:
            return None
        now = time.time()
        if row["expires_at"] is not None and row["expires_at"] <= now:
            await storage.execute(
                "DELETE FROM _credentials WHERE namespace = ? AND key = ? AND expires_at <= ?", (namespace, key, now)
            )
            return None
        return self._sealer.open(namespace, key, bytes(row["value"]))

    async def put(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> None:
        storage, now = await self._prepared(), time.time()
        await storage.execute(
            "INSERT INTO _credentials (namespace, key, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            (namespace, key, self._sealer.seal(namespace, key, value), expiry_time(ttl, now), now),
        )

    async def delete(self, namespace: str, key: str) -> None:
        storage = await self._prepared()
        await storage.execute("DELETE FROM _credentials WHERE namespace = ? AND key = ?", (namespace, key))

    async def create_if_absent(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> bool:
        storage, now = await self._prepared(), time.time()
        blob = self._sealer.seal(namespace, key, value)
        changed = await storage.execute(_CREATE_IF_ABSENT, (namespace, key, blob, expiry_time(ttl, now), now, now))
        return changed == 1

    async def exists(self, namespace: str, key: str) -> bool:
        storage = await self._prepared()
        row = await storage.fetchone(
            "SELECT 1 FROM _credentials WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (namespace, key, time.time()),
        )
        return row is not None

    async def close(self) -> None:
        """Nothing of its own to close: the agent's storage is the agent's."""
