"""Where pending CIBA requests and approved credentials live between tool calls: encrypted, with TTLs.

The store is the source of truth of the async-authorization flow, not the process: a Ray actor may die
between the request and the approval, and its successor must find the pending `auth_req_id` (or the
approved token) instead of pushing a second prompt to the user's phone. Two properties matter:

- `create_if_absent` is atomic (one SQL statement), so of two racing writers, in one process or two,
  exactly one creates the pending record and sends the CIBA request.
- Values are encrypted at rest with AES-256-GCM. The key is derived from `AUTH0_SESSION_ENCRYPTION_KEY`
  with HKDF-SHA256, each value has a fresh random 96-bit nonce, and `namespace` + `key` are bound as
  associated data, so a ciphertext copied to another row does not decrypt. A wrong key or a tampered
  value reads as None with a warning: never garbage, never an exception carrying the secret.

Expired values read as None and are purged. Values are JSON (dicts, lists, strings, numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiosqlite
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from runtime.private_files import private_file
from runtime.storage import connect_sqlite, while_locked

log = logging.getLogger(__name__)

#: Written in front of every ciphertext: lets a later format (or key rotation) coexist with this one.
FORMAT_VERSION = 1
NONCE_BYTES = 12
HKDF_SALT = b"ray-agent-runtime/credential-store"
HKDF_INFO = b"aes-256-gcm/v1"

EncryptionKey = str | bytes | SecretStr


@runtime_checkable
class CredentialStore(Protocol):
    """An async key-value store with TTLs and an atomic create-if-absent.

    `ttl` is in seconds; None keeps the value until deleted. Reads of expired or unreadable values return
    None. Implementations must make `create_if_absent` atomic across every process sharing the store.
    """

    async def get(self, namespace: str, key: str) -> Any | None: ...

    async def put(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> None: ...

    async def delete(self, namespace: str, key: str) -> None: ...

    async def create_if_absent(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store `value` only if no live value exists under `key`; True if this call stored it."""
        ...

    async def exists(self, namespace: str, key: str) -> bool:
        """Whether a live value is stored under `key`, readable or not (`get` returns None for both
        "absent" and "cannot be decrypted"; this tells them apart)."""
        ...


def expiry_time(ttl: float | None, now: float) -> float | None:
    """When a value stored `now` with `ttl` seconds to live expires (None: never)."""
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError("ttl must be positive (or None for no expiry)")
    return now + ttl


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class MemoryCredentialStore:
    """An in-process `CredentialStore` for unit tests and single-process demos (not encrypted, not durable).

    Values are copied through JSON on the way in and out, so callers see the same semantics as with the
    SQLite store (no shared mutable objects, JSON types only).
    """

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], tuple[bytes, float | None]] = {}

    def _live(self, namespace: str, key: str, now: float) -> bytes | None:
        entry = self._data.get((namespace, key))
        if entry is None:
            return None
        raw, expires_at = entry
        if expires_at is not None and expires_at <= now:
            del self._data[(namespace, key)]
            return None
        return raw

    async def get(self, namespace: str, key: str) -> Any | None:
        raw = self._live(namespace, key, time.time())
        return None if raw is None else json.loads(raw)

    async def put(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> None:
        now = time.time()
        self._data[(namespace, key)] = (_encode(value), expiry_time(ttl, now))

    async def delete(self, namespace: str, key: str) -> None:
        self._data.pop((namespace, key), None)

    async def create_if_absent(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> bool:
        now = time.time()  # no await between the check and the write: atomic within the event loop
        if self._live(namespace, key, now) is not None:
            return False
        self._data[(namespace, key)] = (_encode(value), expiry_time(ttl, now))
        return True

    async def exists(self, namespace: str, key: str) -> bool:
        return self._live(namespace, key, time.time()) is not None

    def __len__(self) -> int:
        return len(self._data)


def derive_key(secret: EncryptionKey) -> bytes:
    """The 256-bit AES key for `secret` (HKDF-SHA256 with a fixed, versioned salt and info)."""
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    material = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not material:
        raise ValueError("the credential store needs a non-empty encryption key")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(material)


class CredentialSealer:
    """AES-256-GCM for stored credentials (see the module docstring): `seal` a value for its row, `open` it
    again, reading a wrong key, a tampered value or an unknown format as None (with a warning)."""

    def __init__(self, encryption_key: EncryptionKey) -> None:
        self._aead = AESGCM(derive_key(encryption_key))

    @staticmethod
    def _aad(namespace: str, key: str) -> bytes:
        return b"\x1f".join((bytes([FORMAT_VERSION]), namespace.encode(), key.encode()))

    def seal(self, namespace: str, key: str, value: Any) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return bytes([FORMAT_VERSION]) + nonce + self._aead.encrypt(nonce, _encode(value), self._aad(namespace, key))

    def open(self, namespace: str, key: str, blob: bytes) -> Any | None:
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != FORMAT_VERSION:
            log.warning("credential %s/%s has an unknown format; ignoring it", namespace, key)
            return None
        nonce, ciphertext = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, self._aad(namespace, key))
        except InvalidTag:
            log.warning(
                "credential %s/%s could not be decrypted (wrong AUTH0_SESSION_ENCRYPTION_KEY or tampered); ignoring it",
                namespace,
                key,
            )
            return None
        try:
            return json.loads(plaintext)
        except ValueError:
            log.warning("credential %s/%s decrypted to invalid JSON; ignoring it", namespace, key)
            return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expires_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS credentials_expiry ON credentials (expires_at) WHERE expires_at IS NOT NULL;
"""

# One statement: insert, or replace a row that has already expired. A live row is left alone and the
# statement changes nothing, which is how the caller learns it lost the race.
_CREATE_IF_ABSENT = """
INSERT INTO credentials (namespace, key, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value, expires_at = excluded.expires_at, updated_at = excluded.updated_at
WHERE credentials.expires_at IS NOT NULL AND credentials.expires_at <= ?
"""


class SQLiteCredentialStore:
    """A `CredentialStore` in one SQLite file (WAL), values encrypted with AES-256-GCM.

    Safe for several processes on one host (SQLite's locking, `busy_timeout`); the connection is opened on
    first use and belongs to the event loop that opened it. The file is created with mode 0600.
    `purge_interval` bounds how often a write also sweeps every expired row.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        encryption_key: EncryptionKey,
        *,
        busy_timeout_ms: int = 10_000,
        purge_interval: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self._sealer = CredentialSealer(encryption_key)
        self.busy_timeout_ms = busy_timeout_ms
        self.purge_interval = purge_interval
        self._db: aiosqlite.Connection | None = None
        self._db_loop: asyncio.AbstractEventLoop | None = None
        self._open_lock: asyncio.Lock | None = None
        self._last_purge = 0.0

    def __repr__(self) -> str:
        return f"SQLiteCredentialStore(path={str(self.path)!r})"

    # -- connection ----------------------------------------------------------------------------------
    async def _conn(self) -> aiosqlite.Connection:
        loop = asyncio.get_running_loop()
        if self._db is not None and self._db_loop is loop:
            return self._db
        if self._open_lock is None or self._db_loop is not loop:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._db is not None and self._db_loop is loop:
                return self._db
            if self._db is not None:  # opened by another event loop: close it, or its thread outlives us
                stale, self._db = self._db, None
                with contextlib.suppress(Exception):
                    await stale.close()
            private_file(self.path)
            db = await connect_sqlite(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
            try:
                await self._prepare(db)
            except BaseException:
                await db.close()
                raise
            self._db, self._db_loop = db, loop
            return db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        """Switch to WAL and create the schema. Switching the journal mode takes an exclusive lock that
        SQLite's busy handler does not wait for, so several processes opening a new file at once retry
        here (briefly, with backoff) instead of failing with "database is locked"."""
        await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")

        async def prepare() -> None:
            async with db.execute("PRAGMA journal_mode") as cursor:
                row = await cursor.fetchone()
            if not row or str(row[0]).lower() != "wal":
                await db.execute("PRAGMA journal_mode = WAL")
            await db.executescript(_SCHEMA)

        await while_locked(prepare, self.busy_timeout_ms / 1000)
        await db.execute("PRAGMA synchronous = FULL")  # a lost pending record means a second push

    async def close(self) -> None:
        if self._db is not None:
            try:
                await self._db.close()
            finally:
                self._db = None
                self._db_loop = None

    async def __aenter__(self) -> SQLiteCredentialStore:
        await self._conn()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- CredentialStore -----------------------------------------------------------------------------
    async def get(self, namespace: str, key: str) -> Any | None:
        db = await self._conn()
        async with db.execute(
            "SELECT value, expires_at FROM credentials WHERE namespace = ? AND key = ?", (namespace, key)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        blob, expires_at = row
        now = time.time()
        if expires_at is not None and expires_at <= now:
            await db.execute(
                "DELETE FROM credentials WHERE namespace = ? AND key = ? AND expires_at <= ?",
                (namespace, key, now),
            )
            return None
        return self._sealer.open(namespace, key, bytes(blob))

    async def put(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> None:
        now = time.time()
        blob = self._sealer.seal(namespace, key, value)
        db = await self._conn()
        await db.execute(
            "INSERT INTO credentials (namespace, key, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            (namespace, key, blob, expiry_time(ttl, now), now),
        )
        await self._maybe_purge(db, now)

    async def delete(self, namespace: str, key: str) -> None:
        db = await self._conn()
        await db.execute("DELETE FROM credentials WHERE namespace = ? AND key = ?", (namespace, key))

    async def create_if_absent(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> bool:
        now = time.time()
        blob = self._sealer.seal(namespace, key, value)
        db = await self._conn()
        cursor = await db.execute(_CREATE_IF_ABSENT, (namespace, key, blob, expiry_time(ttl, now), now, now))
        created = cursor.rowcount == 1
        await cursor.close()
        await self._maybe_purge(db, now)
        return created

    async def exists(self, namespace: str, key: str) -> bool:
        db = await self._conn()
        async with db.execute(
            "SELECT 1 FROM credentials WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (namespace, key, time.time()),
        ) as cursor:
            return await cursor.fetchone() is not None

    async def _maybe_purge(self, db: aiosqlite.Connection, now: float) -> None:
        if now - self._last_purge >= self.purge_interval:
            self._last_purge = now
            await db.execute("DELETE FROM credentials WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))


__all__ = [
    "CredentialSealer",
    "CredentialStore",
    "expiry_time",
    "MemoryCredentialStore",
    "SQLiteCredentialStore",
    "derive_key",
]
