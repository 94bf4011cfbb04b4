"""`StreamSlots`: how many event streams are open, per user and per thread, in this replica.

An event stream holds one of the replica's request slots for as long as the client listens, so without a
cap one user opening a thousand streams fills `max_ongoing_requests` for everyone. A stream past either cap
is refused with 429 (JSON, `Retry-After`) before it starts.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import TypeVar

from agentrt.ingress.errors import HttpProblem

T = TypeVar("T")


class StreamSlots:
    def __init__(self) -> None:
        self.by_user: Counter[str] = Counter()
        self.by_thread: Counter[str] = Counter()

    def take(self, subject: str, thread_id: str, *, per_user: int, per_thread: int) -> None:
        """Count a new stream in, or refuse it (429) if the user or the thread is at its cap."""
        if self.by_user[subject] >= per_user:
            detail = f"you have {per_user} event streams open; close one first"
            raise HttpProblem(429, "too_many_streams", detail, {"Retry-After": "5"})
        if self.by_thread[thread_id] >= per_thread:
            detail = f"this thread has {per_thread} event streams open; close one first"
            raise HttpProblem(429, "too_many_streams", detail, {"Retry-After": "5"})
        self.by_user[subject] += 1
        self.by_thread[thread_id] += 1

    def give_back(self, subject: str, thread_id: str) -> None:
        for counts, key in ((self.by_user, subject), (self.by_thread, thread_id)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    def held(self, stream: AsyncIterator[T], subject: str, thread_id: str) -> AsyncIterator[T]:
        """`stream`, giving its slot back exactly once when it ends, however it ends (done, error, client
        gone), or when it is dropped without ever being started."""
        released = False

        def give_back() -> None:
            nonlocal released
            if not released:
                released = True
                self.give_back(subject, thread_id)

        async def run() -> AsyncIterator[T]:
            try:
                async for item in stream:
                    yield item
            finally:
                give_back()

        wrapped = run()
        weakref.finalize(wrapped, give_back)
        return wrapped


slots = StreamSlots()
"""This replica's open streams."""
