"""The SQLite alarm index (no Ray): a live agent's alarm fires a grace after its due time (its own timer
goes first), a sleeping agent's at its due time; an unchanged due time is not written again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runtime.alarm_index import AlarmIndex

KEY = ("tests.alarms:Sleeper", "a")


async def test_a_sleeping_agents_alarm_fires_at_its_time_a_live_ones_after_the_grace(tmp_path: Path) -> None:
    index = AlarmIndex(tmp_path, grace=3600.0)
    await index.open()
    due = time.time() - 1
    await index.record(KEY, due)
    with pytest.raises(TimeoutError):  # live: its own timer fires it, the index waits an hour
        await asyncio.wait_for(index.claim(), 1.0)
    writes = index._store.writes
    await index.record(KEY, due, asleep=True)  # going to sleep, same due time: no write, fired now
    assert index._store.writes == writes
    assert await asyncio.wait_for(index.claim(), 5) == [(KEY, due)]
    await index.close()
