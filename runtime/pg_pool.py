"""The process's PostgreSQL connection pools: one per URL and event loop, opened on first use, whose rows
read by column name or position like `sqlite3.Row`. Shared by the agents' storage (`runtime.storage_pg`)
and the alarm table (`runtime.pg_alarms`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

CONNECT_TIMEOUT = 5.0
"""Seconds a call waits for a pooled connection (the database down, or the pool exhausted) before
`StorageUnavailableError`."""


class Row(tuple):
    """A result row by column name or by position, like `sqlite3.Row`."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        return super().__getitem__(self._index[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


_pools: dict[tuple[str, int], AsyncConnectionPool] = {}


async def connection_pool(url: str, size: int = 10) -> AsyncConnectionPool:
    """The pool of this process's event loop for `url`, opened on first use."""
    key = (url, id(asyncio.get_running_loop()))
    pool = _pools.get(key)
    if pool is None:
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=size,
            open=False,
            kwargs={"row_factory": _row_factory, "autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
        )
        await pool.open(wait=False)  # connections are made in the background; a call waits CONNECT_TIMEOUT
        _pools[key] = pool
    return pool


async def close_pools() -> None:
    """Close this event loop's pools (a process that is ending, or a test)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _pools if k[1] == loop_id]:
        await _pools.pop(key).close()
