"""Runtime micro-benchmark: agent calls, storage, schedules and creation, against a bare Ray actor.

Starts its own local Ray cluster (2 CPUs, no dashboard) with a fresh temporary storage root and measures,
in one run:

1. call round trip: `await handle.noop_read()` (`@read`) and `await handle.noop_turn()` (`@turn`) through
   a `get_agent` handle, the same `@read` sent straight to its host actor (no proxy), and a bare Ray async
   actor's `noop` (the floor); sequential calls after warm-up, in alternating rounds;
2. storage: `self.storage.put` / `get` timed inside the agent, and a put seen from the driver (`@turn`);
3. schedule lateness: pending schedules across several agents, due over a few seconds; each callback
   records `time.time() - due_at` and its index, so the run checks that each fired exactly once;
4. agent creation: time to the first successful call for new agents created one after another, and for
   a batch created concurrently.

Prints a table and writes `bench/results/runtime_bench.json`.

    python bench/runtime_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/runtime_bench.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from bench.common import (  # noqa: E402
    log,
    machine_info,
    scan_logs,
    summarise,
)
from runtime import Agent, InvalidScheduleError, read, turn  # noqa: E402

NAMESPACE = "runtime-bench"


# -- agents and actors under test (top level: Ray workers import them as `bench.runtime_bench`) -----------


class BenchAgent(Agent):
    """No-op calls, storage timings and a schedule callback that records its own lateness in memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fired: list[tuple[int, float]] = []

    @read
    async def noop_read(self) -> None:
        return None

    @turn
    async def noop_turn(self) -> None:
        return None

    @turn
    async def put_value(self, key: str, value: Any) -> None:
        await self.storage.put(key, value)

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

    @read
    async def fired_count(self) -> int:
        return len(self.fired)

    @read
    async def fired_records(self) -> list[tuple[int, float]]:
        return list(self.fired)

    @read
    async def pending_schedules(self) -> int:
        return len(await self.get_schedules(status="pending"))


@ray.remote(num_cpus=0)
class Bare:
    """The floor: a bare Ray async actor."""

    async def noop(self) -> None:
        return None


# -- helpers -----------------------------------------------------------------------------------------------


async def timed_calls(call: Any, n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


# -- phases ------------------------------------------------------------------------------------------------


async def bench_round_trip(cls: type[BenchAgent], root: Path, calls: int, warmup: int, rounds: int) -> dict[str, Any]:
    from runtime import get_agent

    bare = Bare.remote()  # type: ignore[attr-defined]
    agent = get_agent(cls, "rt-0", storage_dir=root, namespace=NAMESPACE)
    host = agent.host  # the agent's host actor, called without the handle's proxy and retry logic
    variants = {
        "bare": lambda: bare.noop.remote(),
        "read": lambda: agent.noop_read(),
        "turn": lambda: agent.noop_turn(),
        "read_raw": lambda: host.call.remote(cls, "rt-0", "noop_read", (), {}, True),
    }
    for call in variants.values():
        await timed_calls(call, warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):  # alternate so that drift (other load on the machine) hits every variant alike
        for name, call in variants.items():
            samples[name].extend(await timed_calls(call, per_round))
    results = {name: summarise(values) for name, values in samples.items()}
    for name in ("read", "turn", "read_raw"):
        results[name]["p50_vs_bare"] = round(results[name]["p50_ms"] / results["bare"]["p50_ms"], 2)
        results[name]["mean_vs_bare"] = round(results[name]["mean_ms"] / results["bare"]["mean_ms"], 2)
    ray.kill(bare)
    return results


async def bench_storage(cls: type[BenchAgent], root: Path, ops: int) -> dict[str, Any]:
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


async def bench_creation(cls: type[BenchAgent], root: Path, n: int) -> tuple[dict[str, Any], list[Any]]:
    """Sequential then concurrent creation; returns the results and the concurrently created handles."""
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
        "sequential": {
            "time_to_first_call": summarise(sequential),
            "get_agent_call_only": summarise(get_agent_part),
            "total_s": round(sum(sequential), 3),
            "get_agent_existing": summarise(existing),
            "bare_actor_time_to_first_call": summarise(bare),
        },
        "concurrent": {
            "n": n,
            "total_s": round(total, 3),
            "all_get_agent_calls_returned_s": round(max(submitted_at), 3),
            "first_call_since_batch_start": summarise(list(since_batch_start)),
        },
    }, handles


SCHEDULE_HEADROOM_S = 0.5
"""A schedule is planned at least this far after the moment it is sent."""


async def bench_schedules(handles: list[Any], total: int, margin: float, spread: float) -> dict[str, Any]:
    """`total` schedules round-robin over `handles`, due from now+margin over `spread` seconds."""
    first_due = time.time() + margin
    dues = [first_due + spread * i / total for i in range(total)]
    per_agent: dict[int, list[int]] = {a: list(range(a, total, len(handles))) for a in range(len(handles))}

    created: list[Any] = []

    async def schedule_all(a: int) -> None:
        handle = handles[a]
        for i in per_agent[a]:  # ascending due order: only each agent's first schedule re-reports its alarm
            while True:
                # on a loaded machine the plan falls behind: a due time is never less than "now" + headroom
                due = dues[i] = max(dues[i], time.time() + SCHEDULE_HEADROOM_S)
                try:
                    when = datetime.fromtimestamp(due, UTC)
                    created.append(await handle.schedule(when, "on_fire", {"i": i, "due_at": due}))
                    break
                except InvalidScheduleError:  # it still arrived after its time: plan it later
                    dues[i] = time.time() + 2 * SCHEDULE_HEADROOM_S

    started = time.perf_counter()
    await asyncio.gather(*(schedule_all(a) for a in range(len(handles))))
    creation_s = time.perf_counter() - started
    created_late = sum(1 for s in created if s.created_at > s.due_at)
    mismatched_due = sum(1 for s in created if abs(s.due_at - s.payload["due_at"]) > 1e-6)
    log(
        f"  {len(created)} schedules created in {creation_s:.2f}s "
        f"({created_late} created after their due time); waiting for them to fire ..."
    )

    deadline = max(dues) + 60.0
    fired = 0
    while time.time() < deadline:
        fired = sum(await asyncio.gather(*(h.fired_count() for h in handles)))
        if fired >= total:
            break
        await asyncio.sleep(0.25)
    all_fired_at = time.time()
    await asyncio.sleep(1.5)  # past the alarm scheduler's wake grace: a duplicate would show up here
    records = [r for recs in await asyncio.gather(*(h.fired_records() for h in handles)) for r in recs]
    pending = sum(await asyncio.gather(*(h.pending_schedules() for h in handles)))
    counts = Counter(i for i, _ in records)
    lateness = [late for _, late in records]
    return {
        "schedules": total,
        "agents": len(handles),
        "due_window_s": spread,
        "creation_s": round(creation_s, 3),
        "created_after_due": created_late,
        "due_mismatch": mismatched_due,
        "fired_records": len(records),
        "fired_distinct": len(counts),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "missing": total - len(counts),
        "still_pending": pending,
        "exactly_once": len(records) == total and len(counts) == total and pending == 0,
        "last_fired_after_last_due_s": round(all_fired_at - max(dues), 3),
        "lateness": summarise(lateness),
        "early_fires": sum(1 for late in lateness if late < 0),
    }


# -- logs --------------------------------------------------------------------------------------------------


# -- report ------------------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    r = report["results"]
    m = report["machine"]
    table = Table(
        title=f"ray-agent-runtime benchmark ({m['cpu_count']} CPUs, Python {m['python']}, Ray {m['ray_version']}"
        f"{', quick' if report['config']['quick'] else ''})"
    )
    for column in ("measurement", "n", "p50 ms", "p99 ms", "mean ms", "max ms", "notes"):
        table.add_column(column, justify="left" if column in ("measurement", "notes") else "right")

    def row(name: str, s: dict[str, Any], notes: str = "") -> None:
        table.add_row(
            name,
            str(s.get("n", "")),
            f"{s['p50_ms']:.3f}" if "p50_ms" in s else "",
            f"{s['p99_ms']:.3f}" if "p99_ms" in s else "",
            f"{s['mean_ms']:.3f}" if "mean_ms" in s else "",
            f"{s['max_ms']:.3f}" if "max_ms" in s else "",
            notes,
        )

    rt = r["round_trip"]
    row("call: bare Ray async actor noop", rt["bare"], "floor")
    row(
        "call: agent @read via get_agent handle",
        rt["read"],
        f"{rt['read']['p50_vs_bare']}x p50, {rt['read']['mean_vs_bare']}x mean vs bare",
    )
    row(
        "call: agent @turn via get_agent handle",
        rt["turn"],
        f"{rt['turn']['p50_vs_bare']}x p50, {rt['turn']['mean_vs_bare']}x mean vs bare",
    )
    row(
        "call: agent @read straight to its host actor",
        rt["read_raw"],
        f"{rt['read_raw']['p50_vs_bare']}x p50, {rt['read_raw']['mean_vs_bare']}x mean vs bare",
    )
    table.add_section()
    st = r["storage"]
    row("storage.put inside agent", st["put_inside"], f"sqlite synchronous={st['sqlite_synchronous']}")
    row("storage.get inside agent", st["get_inside"])
    row("put via @turn from driver", st["put_via_turn_from_driver"], "round trip + put")
    ratio = st["put_fenced"]["p50_ms"] / st["put_unfenced"]["p50_ms"] if st["put_unfenced"]["p50_ms"] else 0
    row("put with the fencing check", st["put_fenced"], f"{ratio:.2f}x a put without it (interleaved)")
    row("put without the fencing check", st["put_unfenced"])
    table.add_section()
    sc = r["schedules"]
    row(
        "schedule lateness (callback - due_at)",
        sc["lateness"],
        f"{sc['schedules']} schedules on {sc['agents']} agents, due over {sc['due_window_s']}s "
        f"(created in {sc['creation_s']}s)",
    )
    table.add_row(
        "schedules fired exactly once",
        str(sc["fired_records"]),
        *[""] * 4,
        f"{sc['exactly_once']}: {sc['fired_distinct']} distinct, {sc['duplicates']} duplicates, "
        f"{sc['missing']} missing, {sc['still_pending']} still pending",
    )
    table.add_section()
    cr = r["creation"]
    row(
        "create agent: sequential, time to 1st call",
        cr["sequential"]["time_to_first_call"],
        f"total {cr['sequential']['total_s']}s",
    )
    row("  of which the get_agent() call", cr["sequential"]["get_agent_call_only"], "blocking, in the event loop")
    row(
        "get_agent() for an existing agent",
        cr["sequential"]["get_agent_existing"],
        "blocking call (cached name lookup)",
    )
    row("create bare Ray actor: time to 1st call", cr["sequential"]["bare_actor_time_to_first_call"], "floor")
    row(
        "create agent: concurrent batch, 1st call done",
        cr["concurrent"]["first_call_since_batch_start"],
        f"batch of {cr['concurrent']['n']}: total {cr['concurrent']['total_s']}s "
        f"(get_agent calls {cr['concurrent']['all_get_agent_calls_returned_s']}s)",
    )
    Console(width=200).print(table)
    logs = report.get("logs", {})
    if logs.get("scanned"):
        console = Console(width=200)
        console.print(f"flagged log lines: {logs['counts'] or 'none'} (benign, not shown: {logs['benign_counts']})")
        for sample in logs["samples"][:6]:
            console.print(f"  {sample['count']:>4} x {sample['line']}", markup=False, highlight=False)


# -- main --------------------------------------------------------------------------------------------------


async def run(cls: type[BenchAgent], root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    phases: dict[str, float] = {}

    started = time.perf_counter()
    log(f"1/4 call round trip ({cfg['calls']} calls per variant) ...")
    results["round_trip"] = await bench_round_trip(cls, root, cfg["calls"], cfg["warmup"], cfg["rounds"])
    phases["round_trip_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    log(f"2/4 storage ({cfg['storage_ops']} puts and gets inside, {cfg['storage_ops']} puts from the driver) ...")
    results["storage"] = await bench_storage(cls, root, cfg["storage_ops"])
    phases["storage_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    log(f"3/4 agent creation ({cfg['agents']} sequential, {cfg['agents']} bare actors, {cfg['agents']} concurrent) ...")
    results["creation"], handles = await bench_creation(cls, root, cfg["agents"])
    phases["creation_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    log(f"4/4 schedules ({cfg['schedules']} across the {len(handles)} concurrently created agents) ...")
    results["schedules"] = await bench_schedules(handles, cfg["schedules"], cfg["margin"], cfg["spread"])
    phases["schedules_s"] = round(time.perf_counter() - started, 2)
    results["phases"] = phases
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "runtime_bench.json")
    args = parser.parse_args()
    if args.quick:
        cfg = {"calls": 200, "warmup": 20, "rounds": 2, "storage_ops": 100, "agents": 5, "schedules": 100}
        cfg.update(margin=3.0, spread=2.0)
    else:
        cfg = {"calls": 2000, "warmup": 200, "rounds": 4, "storage_ops": 1000, "agents": 20, "schedules": 1000}
        cfg.update(margin=5.0, spread=6.0)
    cfg["quick"] = args.quick

    import runtime

    root = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    log(f"starting a local Ray cluster (storage root {root}) ...")
    wall = time.perf_counter()
    session_dir: str | None = None
    try:
        runtime.init(
            storage_dir=root,
            namespace=NAMESPACE,
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )
        try:
            session_dir = ray._private.worker._global_node.get_session_dir_path()  # type: ignore[attr-defined]
        except Exception:
            session_dir = None
        results = asyncio.run(run(BenchAgent, root, cfg))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "runtime_bench",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {**cfg, "storage_root": str(root), "namespace": NAMESPACE},
        "results": results,
        "wall_s": round(time.perf_counter() - wall, 2),
        "logs": scan_logs(session_dir),
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} (wall {report['wall_s']}s)")
    return 0


if __name__ == "__main__":
    # Run the copy imported as `bench.runtime_bench`, not `__main__`: Ray workers and the alarm scheduler
    # import the agent class by that name (Agent.class_path()), and Ray pickles its classes by reference.
    from bench.runtime_bench import main as module_main

    sys.exit(module_main())
