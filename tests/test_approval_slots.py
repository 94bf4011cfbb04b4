"""The users' approval slots (`agents.approval_slots`): one store per process and root, shared by every
agent of the process, so its first users come at once (a restarted host resuming all its threads)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agents.approval_slots import ApprovalSlots


async def test_the_first_purchases_of_a_fresh_process_all_get_their_slots_at_once(tmp_path: Path) -> None:
    slots = ApprovalSlots(tmp_path)
    try:
        calls = [(f"user-{i % 10}", f"call-{i}") for i in range(40)]
        taken = await asyncio.gather(*(slots.take(owner, key, per_user=4, lifetime=60) for owner, key in calls))
        assert taken == [True] * 40  # each of the 10 users has exactly 4 calls: all fit, none failed
        assert not await slots.take("user-0", "call-one-more", per_user=4, lifetime=60)
        await slots.give_back("call-0")
        assert await slots.take("user-0", "call-one-more", per_user=4, lifetime=60)
    finally:
        await slots.close()
