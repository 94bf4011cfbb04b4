"""`Retention`: a durable agent that deletes itself (or forgets what it lists) once idle for N days.

Data is kept only as long as configured (`CHAT_RETENTION_DAYS`, or a class's `retention_days`): a thread
idle that long is deleted as `DELETE /threads/{id}` would (its waiting approvals withdrawn first), and the
owner's thread list forgets the entries idle that long. Each agent keeps one schedule of its own for it:
armed once per activation (a query then, never a write per turn), and when it fires the agent compares
its last activity with the retention and either acts or schedules the next look at the moment it would
be due. A durable schedule, so a restart, a hibernation or a cluster down for a day changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

DAY_SECONDS = 86_400.0


class Retention:
    """One agent's retention schedule (`callback`, the agent's method the schedule calls)."""

    def __init__(self, callback: str) -> None:
        self.callback = callback
        self.armed = False
        """Whether the schedule is known to be pending in this activation."""

    async def arm(self, agent: Any, days: float | None) -> None:
        """Make sure `agent` has the schedule pending (a query once per activation; no retention: nothing)."""
        if days is None or self.armed:
            return
        if not any(s.callback == self.callback for s in await agent.get_schedules(status="pending")):
            await agent.schedule(days * DAY_SECONDS, self.callback, None)
        self.armed = True

    @staticmethod
    def is_idle(days: float, last_active: float) -> bool:
        """Whether something last active at `last_active` has been idle for `days`."""
        return time.time() >= last_active + days * DAY_SECONDS

    async def next_look(self, agent: Any, days: float, last_active: float) -> None:
        """Schedule the next look for when something last active at `last_active` will have been idle for
        `days`."""
        await agent.schedule(max(0.0, last_active + days * DAY_SECONDS - time.time()), self.callback, None)
