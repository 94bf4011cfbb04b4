"""An in-memory, bounded log of thread events with long-poll waiting.

Watchers ask for "events after seq N" and wait until there are some. Events are not persisted (the
messages are): `epoch` changes when the agent restarts, telling a watcher to re-read the messages.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from typing import Any

from agents.messages import ThreadEvent

MAX_EVENTS = 2000


class EventLog:
    """The thread's recent events, numbered; watchers wait for the next one without polling."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._events: deque[ThreadEvent] = deque(maxlen=max_events)
        self._seq = 0
        self._arrived = asyncio.Event()
        """Set (and replaced) by each event: what a waiting watcher awaits."""

    @property
    def last_seq(self) -> int:
        return self._seq

    def emit(self, type_: str, **data: Any) -> ThreadEvent:
        """Record an event and wake the watchers. Called for every streamed token, so it builds the event
        without validation (the fields are ours) and wakes by setting an `asyncio.Event`, not a task."""
        self._seq += 1
        event = ThreadEvent.model_construct(seq=self._seq, epoch=self.epoch, type=type_, data=data, at=time.time())
        self._events.append(event)
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()
        return event

    def after(self, seq: int) -> list[ThreadEvent]:
        return [event for event in self._events if event.seq > seq]

    async def wait_after(self, seq: int, timeout: float) -> list[ThreadEvent]:
        """Events after `seq`, waiting up to `timeout` seconds for the first one."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.after(seq)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return self.after(seq)
