"""Storage stays usable when a caller is cancelled mid-transaction (Ray cancels calls, ingresses time out)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.storage import AgentStorage


async def test_cancelled_transactions_roll_back_and_leave_storage_usable(tmp_path: Path) -> None:
    storage = await AgentStorage(tmp_path / "agent.sqlite3").open()
    started = asyncio.Event()

    async def slow_write(key: str) -> None:
        async with storage.transaction() as tx:
            await tx.put(key, "never committed")
            started.set()
            await asyncio.sleep(10)

    # Cancelled at every early point: before BEGIN runs, right after it, and in the middle of the block.
    for yields in range(6):
        task = asyncio.ensure_future(slow_write(f"cancel-{yields}"))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    task = asyncio.ensure_future(slow_write("cancel-mid"))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    await storage.put("after", "committed")
    assert await storage.get("after") == "committed"
    assert {k: v for k, v in (await storage.list("cancel")).items()} == {}
    await storage.close()


async def test_setdefault_stores_once_and_every_racer_gets_the_winner(tmp_path: Path) -> None:
    """What `OwnedAgent` claims a thread with: of many first callers at once, exactly one value is kept."""
    storage = await AgentStorage(tmp_path / "agent.sqlite3").open()
    try:
        seen = await asyncio.gather(*(storage.setdefault("_owner", f"user-{i}") for i in range(20)))
        assert len(set(seen)) == 1 and seen[0].startswith("user-")
        assert await storage.get("_owner") == seen[0]
        assert await storage.setdefault("_owner", "someone-else") == seen[0]
    finally:
        await storage.close()
