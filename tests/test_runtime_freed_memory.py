"""A host gives back the memory its hibernated agents freed (`runtime.freed_memory`).

The allocation pattern is the agents': objects made and dropped on a thread other than the main one (as
aiosqlite's connection threads do), in a process of its own so that the measure is of nothing else."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from runtime.freed_memory import FreedMemory, _malloc_trim

PROBE = textwrap.dedent(
    """
    import asyncio, os, threading
    from runtime.freed_memory import FreedMemory

    def rss_mib():
        for line in open(f"/proc/{os.getpid()}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def awake_agents():  # 200 MB made and mostly dropped on a thread of its own
        made = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]
        awake_agents.kept = made[::50]

    worker = threading.Thread(target=awake_agents)
    worker.start()
    worker.join()
    asleep = rss_mib()
    trimmed = asyncio.run(FreedMemory(every_seconds=0).release_if_due(hibernations=1))
    print(asleep, rss_mib(), trimmed)
    """
)

needs_glibc = pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's")


@needs_glibc
def test_memory_freed_by_agents_goes_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    asleep, after, trimmed = out.stdout.split()
    assert trimmed == "True"
    assert float(after) < float(asleep) - 100, f"RSS {asleep} -> {after} MiB: the freed 190 MB stayed"


@needs_glibc
def test_a_trim_follows_hibernations_and_not_more_often_than_set() -> None:
    async def scenario() -> list[bool]:
        every_minute = FreedMemory(every_seconds=60)
        every_minute._last -= 61  # the host has run for a minute
        return [
            await every_minute.release_if_due(0),  # nobody left yet: nothing to give back
            await every_minute.release_if_due(3),
            await every_minute.release_if_due(5),  # left again, but the last trim was just now
        ]

    assert asyncio.run(scenario()) == [False, True, False]
