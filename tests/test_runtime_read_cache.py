"""`ReadCache`: a live agent's reads are served from memory until it writes again, and never stale.

The agent is its file's only writer, so a value read between two writes stays true until the next write
transaction ends (`AgentStorage.writes`). These run on a real SQLite file, without Ray.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.read_cache import ReadCache
from runtime.storage import AgentStorage


async def test_a_read_is_served_again_until_the_next_write(tmp_path: Path) -> None:
    storage = await AgentStorage(tmp_path / "a.sqlite3").open()
    cache: ReadCache[dict] = ReadCache(storage)
    reads = 0

    async def read() -> dict:
        nonlocal reads
        reads += 1
        return await storage.list()

    try:
        await storage.put("k", 1)
        assert await cache.get(read) == {"k": 1}
        assert await cache.get(read) == {"k": 1}
        assert reads == 1
        await storage.put("k", 2)
        assert await cache.get(read) == {"k": 2}
        assert reads == 2
        await storage.delete("k")
        assert await cache.get(read) == {}
    finally:
        await storage.close()


async def test_a_write_that_ends_during_a_read_makes_that_read_stale(tmp_path: Path) -> None:
    storage = await AgentStorage(tmp_path / "b.sqlite3").open()
    cache: ReadCache[dict] = ReadCache(storage)
    reading = asyncio.Event()
    release = asyncio.Event()

    async def slow_read() -> dict:
        value = await storage.list()
        reading.set()
        await release.wait()  # a write commits while this read's value is on its way
        return value

    try:
        await storage.put("k", "old")
        pending = asyncio.create_task(cache.get(slow_read))
        await reading.wait()
        await storage.put("k", "new")
        release.set()
        assert await pending == {"k": "old"}  # what was true when it read
        assert await cache.get(storage.list) == {"k": "new"}  # not kept: a write ended during it
    finally:
        await storage.close()


async def test_reads_inside_a_transaction_are_never_cached(tmp_path: Path) -> None:
    storage = await AgentStorage(tmp_path / "c.sqlite3").open()
    cache: ReadCache[dict] = ReadCache(storage)
    try:
        try:
            async with storage.transaction() as tx:
                await tx.put("k", "uncommitted")
                assert await cache.get(storage.list) == {"k": "uncommitted"}  # its own write, not kept
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        assert await cache.get(storage.list) == {}
    finally:
        await storage.close()
