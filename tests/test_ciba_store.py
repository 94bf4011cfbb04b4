"""The encrypted credential store on a real SQLite file: no plaintext at rest, TTLs, wrong keys, tampering."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from tests.ciba_fixtures import encryption_key, store  # noqa: F401  (fixtures)
from tests.waiting import eventually
from tools.ciba.credential_store import CredentialStore, MemoryCredentialStore, SQLiteCredentialStore

TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-access-token-value.signature"


async def test_values_on_disk_are_not_plaintext(store: SQLiteCredentialStore) -> None:  # noqa: F811
    await store.put("ciba:credentials", "t:buy:1", {"access_token": TOKEN, "scope": ["stock:buy"]}, ttl=60)
    assert (await store.get("ciba:credentials", "t:buy:1"))["access_token"] == TOKEN
    await store.close()  # checkpoint the WAL into the main file too
    files = [p for p in store.path.parent.iterdir() if p.name.startswith(store.path.name)]
    assert files
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data and b"secret-access-token" not in data and b"stock:buy" not in data
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


async def test_ttl_expiry_reads_none_and_purges(store: SQLiteCredentialStore) -> None:  # noqa: F811
    await store.put("ns", "short", {"v": 1}, ttl=0.3)
    await store.put("ns", "long", {"v": 2}, ttl=60)
    await store.put("ns", "forever", {"v": 3})
    assert await store.get("ns", "short") == {"v": 1}
    await eventually(lambda: _is_none(store, "ns", "short"), timeout=5, what="expiry")
    assert await store.get("ns", "long") == {"v": 2} and await store.get("ns", "forever") == {"v": 3}
    rows = sqlite3.connect(store.path).execute("SELECT key FROM credentials ORDER BY key").fetchall()
    assert rows == [("forever",), ("long",)]  # the expired row is gone from disk
    # An expired value no longer blocks create_if_absent.
    await store.put("ns", "gone", {"v": 4}, ttl=0.2)
    await eventually(lambda: _is_none(store, "ns", "gone"), timeout=5, what="expiry")
    assert await store.create_if_absent("ns", "gone", {"v": 5}, ttl=60)


async def _is_none(s: CredentialStore, namespace: str, key: str) -> bool:
    return await s.get(namespace, key) is None


async def test_wrong_key_yields_no_credential_and_a_warning(
    store: SQLiteCredentialStore,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    await store.put("ciba:credentials", "k", {"access_token": TOKEN}, ttl=60)
    other = SQLiteCredentialStore(store.path, "another key that is long enough for the settings check")
    try:
        with caplog.at_level(logging.WARNING, logger="tools.ciba.credential_store"):
            assert await other.get("ciba:credentials", "k") is None
    finally:
        await other.close()
    assert "could not be decrypted" in caplog.text
    assert TOKEN not in caplog.text and "long enough" not in caplog.text
    assert await store.get("ciba:credentials", "k") == {"access_token": TOKEN}  # nothing was destroyed


async def test_tampering_yields_none(store: SQLiteCredentialStore, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    await store.put("ns", "a", {"access_token": "A"}, ttl=60)
    await store.put("ns", "b", {"access_token": "B"}, ttl=60)
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        (blob,) = db.execute("SELECT value FROM credentials WHERE key = 'a'").fetchone()
        flipped = bytearray(blob)
        flipped[-5] ^= 0x01
        db.execute("UPDATE credentials SET value = ? WHERE key = 'a'", (bytes(flipped),))
        # Moving a valid ciphertext to another row fails too: namespace and key are associated data.
        (blob_b,) = db.execute("SELECT value FROM credentials WHERE key = 'b'").fetchone()
        db.execute(
            "INSERT INTO credentials (namespace, key, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            ("ns", "c", blob_b, time.time() + 60, time.time()),
        )
        db.execute(
            "INSERT INTO credentials (namespace, key, value, expires_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            ("ns", "short", b"\x01abc", None, time.time()),
        )
    finally:
        db.close()
    with caplog.at_level(logging.WARNING, logger="tools.ciba.credential_store"):
        assert await store.get("ns", "a") is None
        assert await store.get("ns", "c") is None
        assert await store.get("ns", "short") is None
    assert await store.get("ns", "b") == {"access_token": "B"}
    assert caplog.text.count("credential ns/") == 3


async def test_create_if_absent_is_atomic_across_connections(
    store: SQLiteCredentialStore,  # noqa: F811
    encryption_key: str,  # noqa: F811
) -> None:
    others = [SQLiteCredentialStore(store.path, encryption_key) for _ in range(3)]
    try:
        writers = [store, *others] * 5
        created = await asyncio.gather(
            *(s.create_if_absent("ciba:pending", "t:buy:1", {"by": i}, ttl=60) for i, s in enumerate(writers))
        )
        assert created.count(True) == 1
        winner = created.index(True)
        for s in others:
            assert await s.get("ciba:pending", "t:buy:1") == {"by": winner}
    finally:
        for s in others:
            await s.close()


async def test_put_overwrites_delete_removes_and_json_types_round_trip(store: SQLiteCredentialStore) -> None:  # noqa: F811
    value = {"s": "x", "n": 1.5, "i": 3, "l": [1, "a", None], "b": True, "nested": {"k": []}}
    await store.put("ns", "k", value)
    assert await store.get("ns", "k") == value
    await store.put("ns", "k", "replaced", ttl=30)
    assert await store.get("ns", "k") == "replaced"
    assert not await store.create_if_absent("ns", "k", "again")
    await store.delete("ns", "k")
    await store.delete("ns", "k")  # idempotent
    assert await store.get("ns", "k") is None
    assert await store.get("other", "k") is None
    with pytest.raises(ValueError):
        await store.put("ns", "k", 1, ttl=0)


async def test_memory_store_has_the_same_semantics() -> None:
    memory = MemoryCredentialStore()
    assert isinstance(memory, CredentialStore)
    value = {"a": [1]}
    assert await memory.create_if_absent("ns", "k", value, ttl=0.2)
    value["a"].append(2)  # no aliasing of the caller's objects
    assert await memory.get("ns", "k") == {"a": [1]}
    assert not await memory.create_if_absent("ns", "k", {"b": 1})
    await eventually(lambda: _is_none(memory, "ns", "k"), timeout=5, what="expiry")
    assert await memory.create_if_absent("ns", "k", {"b": 1})
    await memory.delete("ns", "k")
    assert await memory.get("ns", "k") is None


def test_store_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteCredentialStore(tmp_path / "x.sqlite3", "")
    assert "k" * 40 not in repr(SQLiteCredentialStore(tmp_path / "x.sqlite3", "k" * 40))
