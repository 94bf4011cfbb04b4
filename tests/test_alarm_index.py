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


async def test_a_sleeping_agents_probe_is_kept_across_a_restart_and_dropped_when_it_is_live(tmp_path: Path) -> None:
    """The probe of a sleeping agent's alarm (`runtime.alarm_probes`) is durable like its due time; a
    deferral moves the alarm and keeps the probe; the agent's next report as a live agent drops it."""
    index = AlarmIndex(tmp_path, grace=0.0)
    await index.open()
    due = time.time() - 1
    await index.record(KEY, due, asleep=True, probe="PROBE")
    await index.close()
    index = AlarmIndex(tmp_path, grace=0.0)  # the scheduler restarted
    await index.open()
    assert await asyncio.wait_for(index.claim(), 5) == [(KEY, due)]
    assert await index.probe(KEY, due) == "PROBE"
    later = time.time() + 0.3
    await index.defer(KEY, due, later)
    assert await index.pending() == {KEY: later}
    assert await asyncio.wait_for(index.claim(), 5) == [(KEY, later)]  # due again at the time it named
    assert await index.probe(KEY, later) == "PROBE"
    await index.record(KEY, due)  # live again (its own report): no probe
    assert await index.probe(KEY, due) is None
    await index.close()
