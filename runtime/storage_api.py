"""What `self.storage` offers an agent, written once over two backends' primitives.

A backend (`runtime.storage`: one SQLite file per agent; `runtime.storage_pg`: PostgreSQL, for clusters)
provides a transaction, committed reads and its own migrations; the key/value API, the values' encoding,
single-statement writes and the `Transaction` helpers are the same on both and live here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, TypeAdapter

from runtime.errors import StaleActivationError

M = TypeVar("M", bound=BaseModel)

Params = Sequence[Any] | dict[str, Any]

Migration = str | Sequence[str] | Callable[["TransactionAPI"], Awaitable[None]]
"""One schema step: SQL text (one or more statements), a list of statements, or an async function."""

EPOCH_KEY = "_epoch"
"""The fencing epoch of an agent's current writer (SQLite keeps it in the agent's `_kv`)."""


class StorageError(RuntimeError):
    """Storage was used wrongly (closed, or a value that cannot be stored)."""


class Row(Protocol):
    """A result row: by column name (`row["value"]`) or position (`row[0]`), as `sqlite3.Row`."""

    def __getitem__(self, key: str | int) -> Any: ...

    def keys(self) -> list[str]: ...


def to_json(value: Any) -> str:
    """Serialise a JSON-able value or pydantic model; raise `TypeError` naming what cannot be stored."""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"value is not JSON-serialisable: {exc}") from None


def decode(text: str, model: Any) -> Any:
    """A stored value, as JSON or validated as `model`."""
    if model is None:
        return json.loads(text)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate_json(text)
    return TypeAdapter(model).validate_json(text)


class TransactionAPI:
    """Write access inside one open transaction; a backend provides `execute`, `executemany`, `fetchall`."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows changed."""
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Params = ()) -> Any | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def put(self, key: str, value: Any) -> None:
        await self.execute(
            "INSERT INTO _kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, to_json(value)),
        )

    async def delete(self, key: str) -> bool:
        return await self.execute("DELETE FROM _kv WHERE key = ?", (key,)) > 0


class StorageAPI:
    """The agent-facing API over a backend's `transaction()`, `fetchall()` and `fetchone()`."""

    epoch: int | None
    writes: int
    on_fenced: Callable[[], None] | None
    """Called once when a write finds a newer epoch (the agent then leaves its host)."""

    def refuse_if_stale(self, name: str, current: int) -> None:
        """The fencing rule, checked by a write transaction before it writes anything: if the agent's
        recorded epoch is no longer this activation's, tell the agent (once) and refuse the write."""
        if current == self.epoch:
            return
        assert self.epoch is not None
        callback, self.on_fenced = self.on_fenced, None
        if callback is not None:
            callback()
        raise StaleActivationError(name, self.epoch, current)

    keeps_next_due: bool = False
    """Whether the store itself records the agent's next due time where the alarm scheduler finds it."""

    async def track_next_due(self, class_path: str) -> bool:
        """Have the store keep this agent's next due time (its earliest pending `_schedules` row) for the
        alarm scheduler, in the same transaction as every schedule change (`keeps_next_due`). Where it
        cannot (SQLite), the agent reports the time to the scheduler's index itself: False."""
        return False

    async def mark_asleep(self, probe: str | None = None) -> None:
        """Where the store keeps the next due time (`keeps_next_due`): the agent is leaving memory, so its
        alarm is due at its time exactly (a live agent's own timer gets a grace first), and carries `probe`
        (an `AlarmProbe` as JSON, `runtime.alarm_probes`)."""

    async def erase(self) -> None:
        """Delete everything this agent stored (its file, or its rows and its epoch), then close."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[TransactionAPI]:
        """One atomic unit of writes: committed when the block ends, rolled back if it raises; nested use
        in the same task joins the outer transaction."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        """Read rows from committed data (or the caller's open transaction)."""
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Params = ()) -> Any | None:
        raise NotImplementedError

    async def migrate(self, scope: str, migrations: Sequence[Migration]) -> int:
        """Apply the migrations of `scope` not yet applied; return how many. A migration's index in the
        list is its version: never reorder or edit applied ones, only append."""
        raise NotImplementedError

    # -- raw SQL ---------------------------------------------------------------------------------------
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one write statement in its own transaction (or the caller's); return rows changed."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    # -- key/value -------------------------------------------------------------------------------------
    async def get(self, key: str, default: Any = None, *, model: type[M] | Any = None) -> Any:
        """The value stored under `key` (validated as `model` if given), else `default`."""
        row = await self.fetchone("SELECT value FROM _kv WHERE key = ?", (key,))
        if row is None:
            return default
        return decode(row["value"], model)

    async def put(self, key: str, value: Any) -> None:
        """Store a JSON-able value or pydantic model under `key`; durable when this returns."""
        to_json(value)  # fail before touching the database
        async with self.transaction() as tx:
            await tx.put(key, value)

    async def setdefault(self, key: str, value: Any) -> Any:
        """The value under `key`, storing `value` there first if there is none (atomic: of two callers
        racing, one stores and both get its value)."""
        encoded = to_json(value)
        async with self.transaction() as tx:
            await tx.execute("INSERT INTO _kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", (key, encoded))
            row = await tx.fetchone("SELECT value FROM _kv WHERE key = ?", (key,))
        assert row is not None
        return decode(row["value"], None)

    async def delete(self, key: str) -> bool:
        """Remove `key`; return whether it existed."""
        async with self.transaction() as tx:
            return await tx.delete(key)

    async def list(self, prefix: str = "", *, model: type[M] | Any = None) -> dict[str, Any]:
        """All keys starting with `prefix`, in key order."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self.fetchall(
            "SELECT key, value FROM _kv WHERE key LIKE ? ESCAPE '\\' ORDER BY key", (escaped + "%",)
        )
        return {row["key"]: decode(row["value"], model) for row in rows}


__all__ = [
    "EPOCH_KEY",
    "Migration",
    "Params",
    "Row",
    "StorageAPI",
    "StorageError",
    "TransactionAPI",
    "decode",
    "to_json",
]
