"""The runtime benchmark's agent under test and its four phases (see `bench/runtime_bench.py`, which runs
them and prints their report): call round trip, storage, agent creation, schedule lateness.

The agent lives here, imported by this name (`bench.runtime_phases`) by the script, the Ray workers and
the alarm scheduler alike (`Agent.class_path()`), so that the class is the same everywhere whether the
script runs as `__main__` or not.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray

from bench.common import Bare, alternating_rounds, log, ratio, summarise, timed_calls
from runtime import Agent, InvalidScheduleError, public, read, turn

NAMESPACE = "runtime-bench"


# -- the agent under test (top level: Ray workers import it as `bench.runtime_phases.BenchAgent`) ---------


class BenchAgent(Agent):
    """No-op calls, storage timings and a schedule callback that records its own lateness in memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fired: list[tuple[int, float]] = []

    @public
    @read
    async def noop_read(self) -> None:
        return None

    @public
    @turn
    async def noop_turn(self) -> None:
        return None

    @public
    @turn
    async def put_value(self, key: str, value: Any) -> None:
        await self.storage.put(key, value)

    @public
    async def schedule_fire(self, when: float, payload: dict[str, Any]) -> Any:
        """`schedule(when, "on_fire", payload)`, for the benchmark driving it from outside."""
        return await self.schedule(when, "on_fire", payload)

    @public
    @turn
    async def storage_timings(self, n: int) -> dict[str, Any]:
        """Time `n` puts of distinct keys, then `n` gets of the same keys, around the storage calls only."""
        value = {"i": 0, "text": "x" * 100, "tags": ["a", "b", "c"]}
        puts: list[float] = []
        gets: list[float] = []
        for i in range(n):
            value["i"] = i
            started = time.perf_counter()
            await self.storage.put(f"bench:{i}", value)
            puts.append(time.perf_counter() - started)
        for i in range(n):
            started = time.perf_counter()
            got = await self.storage.get(f"bench:{i}")
            gets.append(time.perf_counter() - started)
            if got is None or got["i"] != i:
                raise RuntimeError(f"storage returned {got!r} for bench:{i}")
        fenced, unfenced = await self._fencing_timings(n, value)
        return {
            "put": puts,
            "get": gets,
            "put_fenced": fenced,
            "put_unfenced": unfenced,
            "synchronous": self.storage.synchronous,
            "path": str(self.storage.path),
        }

    async def _fencing_timings(self, n: int, value: dict[str, Any]) -> tuple[list[float], list[float]]:
        """Puts with the fencing check (every activation's writes) and without it (epoch unset for the
        moment), interleaved so that both see the same machine."""
        fenced: list[float] = []
        unfenced: list[float] = []
        epoch = self.storage.epoch
        try:
            for i in range(n):
                for bucket, current in ((fenced, epoch), (unfenced, None)):
                    self.storage.epoch = current
                    started = time.perf_counter()
                    await self.storage.put(f"fence:{i}:{current}", value)
                    bucket.append(time.perf_counter() - started)
        finally:
            self.storage.epoch = epoch
        return fenced, unfenced

    async def on_fire(self, payload: dict[str, Any]) -> None:
        self.fired.append((int(payload["i"]), time.time() - float(payload["due_at"])))

    @public
    @read
    async def fired_count(self) -> int:
        return len(self.fired)

    @public
    @read
    async def fired_records(self) -> list[tuple[int, float]]:
        return list(self.fired)

    @public
    @read
    async def pending_schedules(self) -> int:
        return len(await self.get_schedules(status="pending"))

    @public
    @turn
    async def schedule_far(self, n: int) -> int:
        """`n` schedules an hour or more away: the pending load a benchmark runs its near ones against."""
        for k in range(n):
            await self.schedule(3600.0 + k, "on_fire", {"i": -1, "due_at": 0})
        return n


class SleepingBenchAgent(BenchAgent):
    """Hibernates after a second idle, so its schedules are fired by the alarm scheduler waking it; records
    each fire in its storage (its memory does not survive the sleep)."""

    idle_seconds = 1.0

    async def on_fire(self, payload: dict[str, Any]) -> None:
        fired = await self.storage.get("fired", [])
        fired.append([int(payload["i"]), time.time() - float(payload["due_at"])])
        await self.storage.put("fired", fired)

    @public
    @read
    async def fired_records(self) -> list[tuple[int, float]]:
        return [(int(i), float(late)) for i, late in await self.storage.get("fired", [])]

    @public
    @read
    async def fired_count(self) -> int:
        return len(await self.storage.get("fired", []))


# -- 1. call round trip ------------------------------------------------------------------------------------


async def bench_round_trip(cls: type[BenchAgent], root: Path, calls: int, warmup: int, rounds: int) -> dict[str, Any]:
    """An agent's `@read` and `@turn` through its handle and straight to its host, against a bare actor."""
    from runtime import get_agent
    from runtime.host import AgentCall

    bare = Bare.remote()  # type: ignore[attr-defined]
    agent = get_agent(cls, "rt-0", storage_dir=root, namespace=NAMESPACE)
    host = agent.host  # the agent's host actor, called without the handle's proxy and retry logic
    variants = {
        "bare": lambda: bare.noop.remote(),
        "read": lambda: agent.noop_read(),
        "turn": lambda: agent.noop_turn(),
        "read_raw": lambda: host.call.remote(AgentCall(cls, "rt-0", "noop_read")),
    }
    for call in variants.values():
        await timed_calls(call, warmup)
    samples = await alternating_rounds(variants, calls, rounds)
    results = {name: summarise(values) for name, values in samples.items()}
    for name in ("read", "turn", "read_raw"):
        results[name]["p50_vs_bare"] = ratio(results[name]["p50_ms"], results["bare"]["p50_ms"])
        results[name]["mean_vs_bare"] = ratio(results[name]["mean_ms"], results["bare"]["mean_ms"])
    ray.kill(bare)
    return results


# -- 2. storage --------------------------------------------------------------------------------------------


async def bench_storage(cls: type[BenchAgent], root: Path, ops: int) -> dict[str, Any]:
    """Puts and gets timed inside the agent (with and without the fencing check), and a put from the driver."""
    from runtime import get_agent

    agent = get_agent(cls, "storage-0", storage_dir=root, namespace=NAMESPACE)
    await agent.noop_read()
    inside = await agent.storage_timings(ops)
    value = {"i": 0, "text": "x" * 100, "tags": ["a", "b", "c"]}
    for i in range(min(50, ops)):  # warm-up of the driver path
        await agent.put_value(f"warm:{i}", value)
    driver: list[float] = []
    for i in range(ops):
        value["i"] = i
        started = time.perf_counter()
        await agent.put_value(f"driver:{i}", value)
        driver.append(time.perf_counter() - started)
    return {
        "put_inside": summarise(inside["put"]),
        "get_inside": summarise(inside["get"]),
        "put_via_turn_from_driver": summarise(driver),
        "put_fenced": summarise(inside["put_fenced"]),
        "put_unfenced": summarise(inside["put_unfenced"]),
        "sqlite_synchronous": inside["synchronous"],
    }


# -- 3. agent creation -------------------------------------------------------------------------------------


async def create_sequentially(cls: type[BenchAgent], root: Path, n: int) -> dict[str, Any]:
    """New agents one after another (time to the first call, and the `get_agent` part of it), then lookups
    of agents that exist, then the floor: new bare actors, each called once."""
    from runtime import get_agent

    sequential: list[float] = []
    get_agent_part: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        handle = get_agent(cls, f"seq-{i:03d}", storage_dir=root, namespace=NAMESPACE)
        get_agent_part.append(time.perf_counter() - started)
        await handle.noop_read()
        sequential.append(time.perf_counter() - started)

    existing: list[float] = []
    for i in range(max(n * 10, 50)):  # addressing an agent that already exists (a GCS lookup each time)
        started = time.perf_counter()
        get_agent(cls, f"seq-{i % n:03d}", storage_dir=root, namespace=NAMESPACE)
        existing.append(time.perf_counter() - started)

    bare: list[float] = []
    for _ in range(n):  # the floor: a new bare Ray actor (num_cpus=0), created and called once
        started = time.perf_counter()
        actor = Bare.remote()  # type: ignore[attr-defined]
        await actor.noop.remote()
        bare.append(time.perf_counter() - started)
        ray.kill(actor)
    return {
        "time_to_first_call": summarise(sequential),
        "get_agent_call_only": summarise(get_agent_part),
        "total_s": round(sum(sequential), 3),
        "get_agent_existing": summarise(existing),
        "bare_actor_time_to_first_call": summarise(bare),
    }


async def create_concurrently(cls: type[BenchAgent], root: Path, n: int) -> tuple[dict[str, Any], list[Any]]:
    """A batch of `n` new agents at once, each called once; the figures and the handles."""
    from runtime import get_agent

    batch_start = time.perf_counter()
    handles: list[Any] = []
    submitted_at: list[float] = []

    async def create(i: int) -> float:
        handle = get_agent(cls, f"conc-{i:03d}", storage_dir=root, namespace=NAMESPACE)
        handles.append(handle)
        submitted_at.append(time.perf_counter() - batch_start)
        await handle.noop_read()
        return time.perf_counter() - batch_start

    since_batch_start = await asyncio.gather(*(create(i) for i in range(n)))
    total = time.perf_counter() - batch_start
    return {
        "n": n,
        "total_s": round(total, 3),
        "all_get_agent_calls_returned_s": round(max(submitted_at), 3),
        "first_call_since_batch_start": summarise(list(since_batch_start)),
    }, handles


async def bench_creation(cls: type[BenchAgent], root: Path, n: int) -> tuple[dict[str, Any], list[Any]]:
    """Sequential then concurrent creation; returns the results and the concurrently created handles."""
    sequential = await create_sequentially(cls, root, n)
    concurrent, handles = await create_concurrently(cls, root, n)
    return {"sequential": sequential, "concurrent": concurrent}, handles


# -- 4. schedules ------------------------------------------------------------------------------------------

SCHEDULE_HEADROOM_S = 0.5
"""A schedule is planned at least this far after the moment it is sent."""


async def schedule_in_due_order(handle: Any, indices: list[int], dues: list[float], created: list[Any]) -> None:
    """Schedule `indices` on one agent, in ascending due order: only its first schedule re-reports its
    alarm. On a loaded machine the plan falls behind, so a due time is never less than "now" + headroom."""
    for i in indices:
        while True:
            due = dues[i] = max(dues[i], time.time() + SCHEDULE_HEADROOM_S)
            try:
                when = datetime.fromtimestamp(due, UTC)
                created.append(await handle.schedule_fire(when, {"i": i, "due_at": due}))
                break
            except InvalidScheduleError:  # it still arrived after its time: plan it later
                dues[i] = time.time() + 2 * SCHEDULE_HEADROOM_S


async def wait_for_fires(handles: list[Any], total: int, last_due: float) -> float:
    """Until `total` callbacks fired (or a minute past the last due time, and past now); when they had."""
    deadline = max(last_due, time.time()) + 60.0
    while time.time() < deadline:
        if sum(await asyncio.gather(*(h.fired_count() for h in handles))) >= total:
            break
        await asyncio.sleep(0.25)
    return time.time()


def fire_counts(total: int, records: list[tuple[int, float]], pending: int) -> dict[str, Any]:
    """Whether each of the `total` schedules fired exactly once (`records`: index, lateness) and none is
    left pending."""
    counts = Counter(i for i, _ in records)
    return {
        "fired_records": len(records),
        "fired_distinct": len(counts),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "missing": total - len(counts),
        "still_pending": pending,
        "exactly_once": len(records) == total and len(counts) == total and pending == 0,
    }


async def bench_schedules(handles: list[Any], total: int, margin: float, spread: float) -> dict[str, Any]:
    """`total` schedules round-robin over `handles`, due from now+margin over `spread` seconds."""
    first_due = time.time() + margin
    dues = [first_due + spread * i / total for i in range(total)]
    created: list[Any] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(schedule_in_due_order(h, list(range(a, total, len(handles))), dues, created) for a, h in enumerate(handles))
    )
    creation_s = time.perf_counter() - started
    created_late = sum(1 for s in created if s.created_at > s.due_at)
    log(
        f"  {len(created)} schedules created in {creation_s:.2f}s "
        f"({created_late} created after their due time); waiting for them to fire ..."
    )
    all_fired_at = await wait_for_fires(handles, total, max(dues))
    await asyncio.sleep(1.5)  # past the alarm scheduler's wake grace: a duplicate would show up here
    records = [r for recs in await asyncio.gather(*(h.fired_records() for h in handles)) for r in recs]
    pending = sum(await asyncio.gather(*(h.pending_schedules() for h in handles)))
    lateness = [late for _, late in records]
    return {
        "schedules": total,
        "agents": len(handles),
        "due_window_s": spread,
        "creation_s": round(creation_s, 3),
        "created_after_due": created_late,
        "due_mismatch": sum(1 for s in created if abs(s.due_at - s.payload["due_at"]) > 1e-6),
        **fire_counts(total, records, pending),
        "last_fired_after_last_due_s": round(all_fired_at - max(dues), 3),
        "lateness": summarise(lateness),
        "early_fires": sum(1 for late in lateness if late < 0),
    }
