"""`OrderStore`: the checkout API's orders in SQLite, at most one per idempotency key.

A file-backed store keeps its orders across restarts (and may be shared by two processes: the unique
index on `idempotency_key` decides a race between them); without a path the orders live in memory and
die with the app. `order_json` is the one shape in which an order leaves the API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

__all__ = ["ORDER_COLUMNS", "OrderStore", "order_json"]

log = logging.getLogger("devservers.checkout_api")  # the name the checkout API has always logged under

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE orders (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT NOT NULL UNIQUE,
        request_fingerprint TEXT NOT NULL,
        subject TEXT,
        client_id TEXT,
        ticker TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        price REAL NOT NULL,
        limit_price REAL,
        total REAL NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX orders_subject ON orders(subject);
    """,
]

ORDER_COLUMNS = (
    "id, idempotency_key, request_fingerprint, subject, client_id, ticker, quantity, price, limit_price, "
    "total, currency, status, created_at"
)
"""The columns an order record has (and `OrderStore.insert` needs), in table order."""


def order_json(row: aiosqlite.Row) -> dict[str, Any]:
    """An order as the API answers it (without its idempotency key and request fingerprint)."""
    return {
        "id": row["id"],
        "status": row["status"],
        "ticker": row["ticker"],
        "quantity": row["quantity"],
        "price": row["price"],
        "limit_price": row["limit_price"],
        "total": row["total"],
        "currency": row["currency"],
        "subject": row["subject"],
        "client_id": row["client_id"],
        "created_at": row["created_at"],
    }


class OrderStore:
    """Orders in SQLite (a file, or `:memory:` when no path is given), one per idempotency key."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = ":memory:" if path is None else os.fspath(path)
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.lock = asyncio.Lock()
        self._db: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()

    async def db(self) -> aiosqlite.Connection:
        """The connection, opened (and the schema migrated) on first use."""
        if self._db is not None:
            return self._db
        async with self._open_lock:
            if self._db is None:
                db = await aiosqlite.connect(self.path)
                db.row_factory = aiosqlite.Row
                await db.execute("PRAGMA busy_timeout = 5000")
                if self.path != ":memory:":
                    await db.execute("PRAGMA journal_mode = WAL")
                await self._migrate(db)
                self._db = db
        return self._db

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
        # a restarted server runs on a new event loop, and an asyncio lock stays bound to the loop it
        # first waited on: give the next one fresh locks
        self.lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()

    async def by_key(self, key: str) -> aiosqlite.Row | None:
        db = await self.db()
        async with db.execute(f"SELECT {ORDER_COLUMNS} FROM orders WHERE idempotency_key = ?", (key,)) as cur:
            return await cur.fetchone()

    async def by_id(self, order_id: str) -> aiosqlite.Row | None:
        db = await self.db()
        async with db.execute(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?", (order_id,)) as cur:
            return await cur.fetchone()

    async def insert(self, order: dict[str, Any]) -> None:
        db = await self.db()
        columns = [c.strip() for c in ORDER_COLUMNS.split(",")]
        await db.execute(
            f"INSERT INTO orders ({ORDER_COLUMNS}) VALUES ({', '.join('?' for _ in columns)})",
            tuple(order[c] for c in columns),
        )
        await db.commit()

    async def record_once(self, key: str, new_order: Callable[[], dict[str, Any]]) -> tuple[aiosqlite.Row, bool]:
        """The order stored under idempotency `key`, and whether this call stored it. Only when the key has
        no order yet is `new_order()` called (under the lock, so its `created_at` follows the order of
        insertion) and its record inserted; otherwise the order already there (maybe for another body) is
        returned as it is."""
        async with self.lock:
            existing = await self.by_key(key)
            if existing is not None:
                return existing, False
            order = new_order()
            try:
                await self.insert(order)
            except sqlite3.IntegrityError:  # another process holding the same file won the race
                existing = await self.by_key(key)
                if existing is None:
                    raise
                return existing, False
            created = await self.by_key(key)
            assert created is not None
            log.info("order %s: %d %s at %s", order["id"], order["quantity"], order["ticker"], order["price"])
            return created, True

    async def list_orders(
        self, *, subject: str | None = None, limit: int = 1000, idempotency_key: str | None = None
    ) -> list[aiosqlite.Row]:
        db = await self.db()
        sql = f"SELECT {ORDER_COLUMNS} FROM orders WHERE 1 = 1"
        params: tuple[Any, ...] = ()
        if subject is not None:
            sql += " AND subject = ?"
            params += (subject,)
        if idempotency_key is not None:
            sql += " AND idempotency_key = ?"
            params += (idempotency_key,)
        sql += " ORDER BY seq LIMIT ?"
        async with db.execute(sql, (*params, limit)) as cur:
            return list(await cur.fetchall())

    async def count(self) -> int:
        db = await self.db()
        async with db.execute("SELECT COUNT(*) FROM orders") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
