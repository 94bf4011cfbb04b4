"""Alarm benchmark: schedule lateness with 10,000 schedules pending, on both storage backends in one run.

For each backend (SQLite files, and a real PostgreSQL started here with `fsync=on`), in a process of its
own with its own local Ray (2 CPUs):

1. **live agents**: `--agents` agents each hold `--pending` / agents schedules an hour away (the load), then
   `--near` more schedules are made due over `--spread` seconds; a live agent fires them with its own timer.
2. **sleeping agents**: `--sleepers` agents (idle after 1 s) each get one schedule due 10-30 s later and go
   to sleep; the alarm scheduler wakes them: from its index (SQLite) or by claiming rows of the database's
   alarm table (PostgreSQL), at the due time (a live agent's alarm only `WAKE_GRACE_SECONDS` after it: its
   own timer goes first), so this lateness is the wake-up's.

Each callback records `time.time() - due_at` and its index, so the run also checks each fired exactly once.
Prints a table and writes `bench/results/alarm_bench.json`. Deadlines are taken from "now" at each wait.

    python bench/alarm_bench.py [--pending 10000] [--agents 20] [--near 400] [--sleepers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import log, report_head, summarise, write_report  # noqa: E402
from bench.tables import LATENCY_COLUMNS, latency_row, note_row, print_table  # noqa: E402

NAMESPACE = "alarm-bench"


async def live_phase(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench.runtime_phases import BenchAgent, fire_counts, schedule_in_due_order, wait_for_fires
    from runtime import get_agent

    handles = [get_agent(BenchAgent, f"live-{i}", storage_dir=root, namespace=NAMESPACE) for i in range(args.agents)]
    started = time.perf_counter()
    per_agent = args.pending // args.agents
    await asyncio.gather(*(h.schedule_far(per_agent) for h in handles))
    log(f"  {per_agent * args.agents} far schedules in {time.perf_counter() - started:.1f} s")
    first_due = time.time() + 5.0
    dues = [first_due + args.spread * i / args.near for i in range(args.near)]
    created: list[Any] = []
    await asyncio.gather(
        *(
            schedule_in_due_order(h, list(range(a, args.near, len(handles))), dues, created)
            for a, h in enumerate(handles)
        )
    )
    await wait_for_fires(handles, args.near, max(dues))
    await asyncio.sleep(1.5)  # past the scheduler's grace: a duplicate would show up here
    records = [r for recs in await asyncio.gather(*(h.fired_records() for h in handles)) for r in recs]
    pending = sum(await asyncio.gather(*(h.pending_schedules() for h in handles))) - per_agent * args.agents
    return {
        "pending_load": per_agent * args.agents,
        **fire_counts(args.near, records, pending),
        "lateness": summarise([late for _, late in records]),
    }


async def sleeping_phase(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench.runtime_phases import SleepingBenchAgent, fire_counts, wait_for_fires
    from runtime import get_agent

    handles = [
        get_agent(SleepingBenchAgent, f"asleep-{i}", storage_dir=root, namespace=NAMESPACE)
        for i in range(args.sleepers)
    ]
    first_due = time.time() + 10.0 + args.sleepers * 0.05  # after every agent got its schedule and slept
    rng = random.Random(7)
    dues = sorted(first_due + rng.uniform(0, 20) for _ in handles)
    for i, (handle, due) in enumerate(zip(handles, dues, strict=True)):
        due = dues[i] = max(due, time.time() + 2.0)
        await handle.schedule_fire(datetime.fromtimestamp(due, UTC), {"i": i, "due_at": due})
    # asking an agent would wake it: look only once every schedule is due (and the scheduler had its turn)
    await asyncio.sleep(max(0.0, max(dues) + 3.0 - time.time()))
    await wait_for_fires(handles, args.sleepers, time.time())
    records = [r for recs in await asyncio.gather(*(h.fired_records() for h in handles)) for r in recs]
    return {**fire_counts(args.sleepers, records, 0), "lateness": summarise([late for _, late in records])}


def child(backend: str, url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """One backend's run, in this (child) process: its own Ray and storage root."""
    import ray

    import runtime

    root = Path(tempfile.mkdtemp(prefix=f"alarm-bench-{backend}-"))
    env = {"PYTHONPATH": str(REPO), "AGENT_IDLE_SECONDS": "600"}
    if url:
        env["AGENT_STORAGE_URL"] = url
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
    runtime.init(storage_dir=root, namespace=NAMESPACE)
    log(f"{backend}: live agents, {args.pending} pending")
    live = asyncio.run(live_phase(root, args))
    log(f"{backend}: {args.sleepers} sleeping agents woken by the scheduler")
    asleep = asyncio.run(sleeping_phase(root, args))
    ray.shutdown()
    return {"live": live, "sleeping": asleep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--near", type=int, default=400)
    parser.add_argument("--spread", type=float, default=20.0)
    parser.add_argument("--sleepers", type=int, default=100)
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "alarm_bench.json")
    args = parser.parse_args()
    if args.child:
        backend, url = args.child
        print(json.dumps(child(backend, url if url != "-" else None, args)))
        return

    from tests.postgres import postgres_server

    report: dict[str, Any] = report_head("alarm_bench", utc_timestamp=True)
    report["config"] = {k: v for k, v in vars(args).items() if k not in ("child", "out")}
    passed = [f"--{k}={v}" for k, v in report["config"].items()]
    with postgres_server(fsync=True) as server:
        for backend, url in (("sqlite", "-"), ("postgres", server.url)):
            proc = subprocess.run(
                [sys.executable, __file__, *passed, "--child", backend, url],
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"{backend} failed:\n{proc.stderr[-4000:]}")
            report[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for backend in ("sqlite", "postgres"):
        seen = report[backend]
        once = "exactly once" if seen["live"]["exactly_once"] else f"NOT once: {seen['live']}"
        rows.append(latency_row(f"{backend}: live agents", seen["live"]["lateness"], once))
        once = "exactly once" if seen["sleeping"]["exactly_once"] else "NOT once"
        rows.append(latency_row(f"{backend}: sleeping agents", seen["sleeping"]["lateness"], once))
    rows.append(note_row("pending schedules while measured", "", str(report["sqlite"]["live"]["pending_load"])))
    print_table("schedule lateness, both backends, same run (target p99 <= 50 ms)", LATENCY_COLUMNS, rows, width=140)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
