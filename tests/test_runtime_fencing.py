"""Single writer, enforced: each activation of an agent takes a fencing epoch in its own file, and a write
from an older activation after a newer one started fails with `StaleActivationError`, changing nothing.

On a cluster this is the node that is cut off but not dead: it keeps running its actor while Ray starts a
replacement elsewhere. Here the two activations are real agents on one real SQLite file, the older one
kept alive on purpose: in this process, and in a Ray host beside a newer one in the driver.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runtime import StaleActivationError, get_agent
from tests.agents_under_test import Counter

pytestmark = pytest.mark.usefixtures("ray_cluster")


def file_facts(path: Path) -> tuple[str, int, str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        epoch = int(db.execute("SELECT value FROM _kv WHERE key = '_epoch'").fetchone()[0])
        value = db.execute("SELECT value FROM _kv WHERE key = 'k'").fetchone()[0]
    return integrity, epoch, value


async def test_an_older_activation_cannot_write_once_a_newer_one_started(storage_dir: Path) -> None:
    older = Counter("fenced", storage_dir)
    await older.ready()
    await older.put("k", "old")
    await older.schedule(3600, "record_fire", None)  # armed: the fenced instance must stop its timer
    newer = Counter("fenced", storage_dir)
    await newer.ready()
    await newer.put("k", "new")
    await newer.append(1)
    with pytest.raises(StaleActivationError, match="superseded"):
        await older.put("k", "stale")
    with pytest.raises(StaleActivationError):
        await older.append(99)
    assert older._timer is None, "a fenced-off activation must stop firing by itself"
    assert await newer.get("k") == "new" and await newer.get("sequence") == [1]
    assert await newer.get("starts") == 2  # both started; only the newer one wrote since
    assert file_facts(Counter.storage_path(storage_dir, "fenced")) == ("ok", 2, '"new"')
    await older.close()
    await newer.close()


async def test_a_host_drops_a_fenced_off_agent_and_does_not_take_the_file_back(storage_dir: Path) -> None:
    handle = get_agent(Counter, "fenced-host", storage_dir=storage_dir)
    await handle.put("k", "host")
    newer = Counter("fenced-host", storage_dir)  # a newer activation elsewhere (here: the driver)
    await newer.ready()
    with pytest.raises(StaleActivationError):
        await handle.put("k", "stale")
    stats = await handle.host.stats.remote()
    assert stats["fenced"] == 1
    assert "Counter/fenced-host" not in stats["live_names"]
    with pytest.raises(StaleActivationError):  # refused, not re-activated (that would take the file back)
        await handle.get("k")
    await newer.put("k", "newer")
    assert file_facts(Counter.storage_path(storage_dir, "fenced-host")) == ("ok", 2, '"newer"')
    await newer.close()
