"""Agents used by the runtime tests (importable as `tests.agents_under_test` by Ray workers)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from pydantic import BaseModel

from runtime import Agent, Schedule, public, read, turn


class CounterState(BaseModel):
    count: int = 0
    label: str = ""


class RuntimeMethodsForTests:
    """The runtime's own methods (schedules, state, the process id), opened to the tests' handles: a product
    agent exposes none of them (they are not `@public`), a test drives them from outside."""

    @public
    async def schedule(self, when: Any, callback: str, payload: Any = None) -> Schedule:
        return await super().schedule(when, callback, payload)  # type: ignore[misc]

    @public
    async def cancel_schedule(self, schedule_id: str) -> bool:
        return await super().cancel_schedule(schedule_id)  # type: ignore[misc]

    @public
    @read
    async def get_schedules(self, *, status: str | None = None) -> list[Schedule]:
        return await super().get_schedules(status=status)  # type: ignore[misc]

    @public
    async def set_state(self, state: Any) -> Any:
        return await super().set_state(state)  # type: ignore[misc]

    @public
    @read
    async def get_state(self) -> Any:
        return await super().get_state()  # type: ignore[misc]

    @public
    @read
    async def process_id(self) -> int:
        """The OS process id serving this agent (to SIGKILL its host: a real crash)."""
        return os.getpid()


class Counter(RuntimeMethodsForTests, Agent):
    """Exercises storage, state, turns and schedules."""

    state_model = CounterState
    migrations = [
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, value INTEGER NOT NULL)",
        "ALTER TABLE events ADD COLUMN note TEXT",
    ]
    schedule_retry_base_seconds = 0.1
    schedule_max_retries = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance_token = uuid.uuid4().hex
        self._active_turns = 0
        self.max_active_turns = 0
        self.busy = False

    async def on_start(self) -> None:
        starts = await self.storage.get("starts", 0)
        await self.storage.put("starts", starts + 1)

    @public
    @read
    async def whoami(self) -> dict[str, Any]:
        return {"token": self.instance_token, "pid": os.getpid(), "name": self.name}

    # -- storage -----------------------------------------------------------------------------------
    @public
    @turn
    async def put(self, key: str, value: Any) -> None:
        await self.storage.put(key, value)

    @public
    @read
    async def get(self, key: str) -> Any:
        return await self.storage.get(key)

    @public
    @read
    async def list_keys(self, prefix: str = "") -> dict[str, Any]:
        return await self.storage.list(prefix)

    @public
    @turn
    async def add_events_then_fail(self, values: list[int]) -> None:
        async with self.storage.transaction() as tx:
            for value in values:
                await tx.execute("INSERT INTO events(value) VALUES (?)", (value,))
            raise RuntimeError("boom after inserts")

    @public
    @read
    async def events(self) -> list[int]:
        return [row["value"] for row in await self.storage.fetchall("SELECT value FROM events ORDER BY seq")]

    # -- turns -------------------------------------------------------------------------------------
    @public
    @turn
    async def append(self, value: int) -> int:
        self._active_turns += 1
        self.max_active_turns = max(self.max_active_turns, self._active_turns)
        try:
            current = await self.storage.get("sequence", [])
            await asyncio.sleep(0.002)  # give other calls every chance to interleave
            await self.storage.put("sequence", [*current, value])
            await self.set_state({"count": self.state.count + 1, "label": self.state.label})
            return len(current) + 1
        finally:
            self._active_turns -= 1

    @public
    @turn
    async def slow_put(self, key: str, value: Any, seconds: float) -> None:
        """A turn that writes only after a while (so a test can cancel its caller in between)."""
        await asyncio.sleep(seconds)
        await self.storage.put(key, value)

    @public
    @read
    async def turn_stats(self) -> dict[str, Any]:
        return {"max_active_turns": self.max_active_turns, "busy": self.busy}

    @public
    @turn
    async def slow(self, seconds: float) -> str:
        self.busy = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.busy = False
        return "slow done"

    # -- schedule callbacks --------------------------------------------------------------------------
    async def record_fire(self, payload: Any) -> None:
        fires = await self.storage.get("fires", [])
        fires.append({"at": time.time(), "payload": payload})
        await self.storage.put("fires", fires)

    async def always_fails(self, payload: Any) -> None:
        attempts = await self.storage.get("fail_attempts", [])
        attempts.append(time.time())
        await self.storage.put("fail_attempts", attempts)
        raise RuntimeError(f"callback failure #{len(attempts)}")

    async def erase_myself(self, payload: Any) -> None:
        """A schedule that deletes its agent (as a thread's retention does)."""
        await self.delete_everything()


class QuickCounter(Counter):
    """A `Counter` that hibernates after half a second with nothing to do."""

    idle_seconds = 0.5


class LingeringCounter(Counter):
    """Stays live for ten minutes with nothing to do."""

    idle_seconds = 600.0


class SlowLeavingCounter(Counter):
    """Hibernates quickly but takes a while to close, so calls can race with its leave."""

    idle_seconds = 0.3

    async def close(self) -> None:
        await asyncio.sleep(1.2)
        await super().close()


class PlainCounter(Agent):
    """`@public` alone (no `@turn`/`@read`): turns, run after start-up (storage open, migrations applied)."""

    migrations = ["CREATE TABLE notes (text TEXT NOT NULL)"]

    @public
    async def write(self, key: str, value: Any) -> None:
        await self.storage.put(key, value)

    @public
    async def note(self, text: str) -> int:
        await self.storage.execute("INSERT INTO notes(text) VALUES (?)", (text,))
        row = await self.storage.fetchone("SELECT COUNT(*) AS n FROM notes")
        return int(row["n"])

    @public
    async def lookup(self, key: str) -> Any:
        return await self.storage.get(key)
