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

Prints a table and writes `bench/results/runtime_bench.json`. The agent under test and the phases are in
`bench/runtime_phases.py`.

    python bench/runtime_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/runtime_bench.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from bench.common import log, ray_session_dir, report_head, scan_logs, timed_phase, write_report  # noqa: E402
from bench.runtime_phases import (  # noqa: E402
    NAMESPACE,
    BenchAgent,
    bench_creation,
    bench_round_trip,
    bench_schedules,
    bench_storage,
)
from bench.tables import (  # noqa: E402
    LATENCY_COLUMNS,
    SECTION,
    Row,
    latency_row,
    machine_title,
    note_row,
    print_flagged_logs,
    print_table,
)

# -- report ------------------------------------------------------------------------------------------------


def versus_bare(s: dict[str, Any]) -> str:
    return f"{s['p50_vs_bare']}x p50, {s['mean_vs_bare']}x mean vs bare"


def round_trip_rows(rt: dict[str, Any]) -> list[Row]:
    return [
        latency_row("call: bare Ray async actor noop", rt["bare"], "floor"),
        latency_row("call: agent @read via get_agent handle", rt["read"], versus_bare(rt["read"])),
        latency_row("call: agent @turn via get_agent handle", rt["turn"], versus_bare(rt["turn"])),
        latency_row("call: agent @read straight to its host actor", rt["read_raw"], versus_bare(rt["read_raw"])),
    ]


def storage_rows(st: dict[str, Any]) -> list[Row]:
    fenced, unfenced = st["put_fenced"], st["put_unfenced"]
    ratio = fenced["p50_ms"] / unfenced["p50_ms"] if unfenced["p50_ms"] else 0
    return [
        latency_row("storage.put inside agent", st["put_inside"], f"sqlite synchronous={st['sqlite_synchronous']}"),
        latency_row("storage.get inside agent", st["get_inside"]),
        latency_row("put via @turn from driver", st["put_via_turn_from_driver"], "round trip + put"),
        latency_row("put with the fencing check", fenced, f"{ratio:.2f}x a put without it (interleaved)"),
        latency_row("put without the fencing check", unfenced),
    ]


def schedule_rows(sc: dict[str, Any]) -> list[Row]:
    return [
        latency_row(
            "schedule lateness (callback - due_at)",
            sc["lateness"],
            f"{sc['schedules']} schedules on {sc['agents']} agents, due over {sc['due_window_s']}s "
            f"(created in {sc['creation_s']}s)",
        ),
        note_row(
            "schedules fired exactly once",
            str(sc["fired_records"]),
            f"{sc['exactly_once']}: {sc['fired_distinct']} distinct, {sc['duplicates']} duplicates, "
            f"{sc['missing']} missing, {sc['still_pending']} still pending",
        ),
    ]


def creation_rows(cr: dict[str, Any]) -> list[Row]:
    seq, conc = cr["sequential"], cr["concurrent"]
    return [
        latency_row(
            "create agent: sequential, time to 1st call", seq["time_to_first_call"], f"total {seq['total_s']}s"
        ),
        latency_row("  of which the get_agent() call", seq["get_agent_call_only"], "blocking, in the event loop"),
        latency_row(
            "get_agent() for an existing agent", seq["get_agent_existing"], "blocking call (cached name lookup)"
        ),
        latency_row("create bare Ray actor: time to 1st call", seq["bare_actor_time_to_first_call"], "floor"),
        latency_row(
            "create agent: concurrent batch, 1st call done",
            conc["first_call_since_batch_start"],
            f"batch of {conc['n']}: total {conc['total_s']}s "
            f"(get_agent calls {conc['all_get_agent_calls_returned_s']}s)",
        ),
    ]


def print_report(report: dict[str, Any]) -> None:
    """The table, then the Ray log lines worth a look."""
    r = report["results"]
    rows = [
        *round_trip_rows(r["round_trip"]),
        SECTION,
        *storage_rows(r["storage"]),
        SECTION,
        *schedule_rows(r["schedules"]),
        SECTION,
        *creation_rows(r["creation"]),
    ]
    console = print_table(machine_title("benchmark", report), LATENCY_COLUMNS, rows, width=200)
    print_flagged_logs(console, report.get("logs", {}), samples=6)


# -- main --------------------------------------------------------------------------------------------------


async def run(cls: type[BenchAgent], root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The four phases in turn (the schedules on the agents created concurrently); their seconds in `phases`."""
    results: dict[str, Any] = {}
    phases: dict[str, float] = {}
    log(f"1/4 call round trip ({cfg['calls']} calls per variant) ...")
    results["round_trip"] = await timed_phase(
        phases, "round_trip_s", bench_round_trip(cls, root, cfg["calls"], cfg["warmup"], cfg["rounds"])
    )
    log(f"2/4 storage ({cfg['storage_ops']} puts and gets inside, {cfg['storage_ops']} puts from the driver) ...")
    results["storage"] = await timed_phase(phases, "storage_s", bench_storage(cls, root, cfg["storage_ops"]))
    log(f"3/4 agent creation ({cfg['agents']} sequential, {cfg['agents']} bare actors, {cfg['agents']} concurrent) ...")
    results["creation"], handles = await timed_phase(phases, "creation_s", bench_creation(cls, root, cfg["agents"]))
    log(f"4/4 schedules ({cfg['schedules']} across the {len(handles)} concurrently created agents) ...")
    results["schedules"] = await timed_phase(
        phases, "schedules_s", bench_schedules(handles, cfg["schedules"], cfg["margin"], cfg["spread"])
    )
    results["phases"] = phases
    return results


def config(quick: bool) -> dict[str, Any]:
    """The run's sizes (`--quick`: a smoke run)."""
    if quick:
        cfg: dict[str, Any] = {"calls": 200, "warmup": 20, "rounds": 2, "storage_ops": 100, "agents": 5}
        cfg.update(schedules=100, margin=3.0, spread=2.0)
    else:
        cfg = {"calls": 2000, "warmup": 200, "rounds": 4, "storage_ops": 1000, "agents": 20}
        cfg.update(schedules=1000, margin=5.0, spread=6.0)
    cfg["quick"] = quick
    return cfg


def start_ray(root: Path) -> None:
    """A local Ray cluster of its own (2 CPUs, no dashboard), the repository on the workers' path (they
    import `bench.runtime_agent` and `bench.common`)."""
    import runtime

    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    runtime.init(
        storage_dir=root,
        namespace=NAMESPACE,
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "runtime_bench.json")
    args = parser.parse_args()
    cfg = config(args.quick)

    root = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    log(f"starting a local Ray cluster (storage root {root}) ...")
    wall = time.perf_counter()
    session_dir: str | None = None
    try:
        start_ray(root)
        session_dir = ray_session_dir()
        results = asyncio.run(run(BenchAgent, root, cfg))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    report = {
        **report_head("runtime_bench", utc_timestamp=True),
        "config": {**cfg, "storage_root": str(root), "namespace": NAMESPACE},
        "results": results,
        "wall_s": round(time.perf_counter() - wall, 2),
        "logs": scan_logs(session_dir),
    }
    print_report(report)
    write_report(args.out, report, f" (wall {report['wall_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
