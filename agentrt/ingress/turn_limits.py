"""`TurnLimits`: how many turns one user may start, per minute and at once, in this replica.

A turn costs a model call (and maybe tool calls and a push to the user's phone), so a user, or a stolen
token, must not be able to start them without bound. Each `POST /messages` and `POST /tool-results` takes
a turn: past `AGENTRT_MAX_TURNS_PER_MINUTE` in the last minute, or with `AGENTRT_MAX_CONCURRENT_TURNS` of
the user's turns still running, it is refused with 429 (`too_many_turns`, `Retry-After`) before any agent
is called. The counts are per replica, like the event-stream caps (`StreamSlots`): with R replicas a
user may reach R times the figures.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable

from agentrt.ingress.errors import HttpProblem

WINDOW_SECONDS = 60.0


class TurnLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: dict[str, deque[float]] = {}
        self.running: Counter[str] = Counter()

    def take(self, subject: str, *, per_minute: int, concurrent: int) -> Callable[[], None]:
        """Count a new turn of `subject` in, or refuse it (429); returns what gives it back when it ends."""
        now = self.clock()
        recent = self.started.setdefault(subject, deque())
        while recent and recent[0] <= now - WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= per_minute:
            wait = max(1, math.ceil(recent[0] + WINDOW_SECONDS - now))
            detail = f"at most {per_minute} messages per minute; try again in {wait} s"
            raise HttpProblem(429, "too_many_turns", detail, {"Retry-After": str(wait)})
        if self.running[subject] >= concurrent:
            detail = f"you already have {concurrent} turns running; wait for one to finish"
            raise HttpProblem(429, "too_many_turns", detail, {"Retry-After": "2"})
        recent.append(now)
        self.running[subject] += 1
        released = False

        def give_back() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.running[subject] -= 1
            if self.running[subject] <= 0:
                del self.running[subject]

        return give_back


#: The replica's limits (one per process).
turn_limits = TurnLimits()
