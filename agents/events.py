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
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._events: deque[ThreadEvent] = deque(maxlen=max_events)
        self._seq = 0
        self._changed = asyncio.Condition()

    @property
    def last_seq(self) -> int:
        return self._seq

    def emit(self, type_: str, **data: Any) -> ThreadEvent:
        self._seq += 1
        event = ThreadEvent(seq=self._seq, epoch=self.epoch, type=type_, data=data, at=time.time())  # type: ignore[arg-type]
        self._events.append(event)
        asyncio.get_running_loop().create_task(self._notify())
        return event

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def after(self, seq: int) -> list[ThreadEvent]:
        return [event for event in self._events if event.seq > seq]

    async def wait_after(self, seq: int, timeout: float) -> list[ThreadEvent]:
        """Events after `seq`, waiting up to `timeout` seconds for the first one."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                events = self.after(seq)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0:
                    return events
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return self.after(seq)
