"""Waiting benchmark: 100,000 threads on file, 10,000 of them waiting for their users' approval, asleep.

Starts the whole stack locally (Ray, dev authorization server in CIBA ping mode, checkout API, the HTTP
ingress serving `bench.waiting_agent.Waiter`, two agent hosts on SQLite files), measures the empty stack,
then (phases in `bench/waiting_phases.py`):

1. T threads created through the runtime (`get_agent(...).claim(token)`), C at a time;
2. P of them start a purchase (`buy_stock` behind the CIBA wrapper; the model is a script) and fall asleep;
3. while all P wait: the whole node's CPU (every process of the stack, as a share of one core) over W s,
   and its memory, against the empty stack's (targets: CPU under 5% of a core, memory within 10%), and
   the safety-net checks for lost pings the scheduler ran meanwhile as probes, without waking a thread
   (`--fallback 100` paces them as Auth0's 300 s requests would be);
4. S approvals one at a time, each thread asleep when its user approves: approval -> tool result, by ping
   (target p99 <= 150 ms);
5. B approvals at once while the host count goes 2 -> 4 -> 2 and a user reads threads over HTTP: all
   placed once (orders == approvals, CIBA requests == purchases), time to drain, share of agents moved,
   fenced activations and errors callers saw (targets 0).

Prints a table and writes `bench/results/waiting_bench.json`. `--quick` is a smoke run (2,000 threads);
the suite runs a shorter one still (`tests/test_waiting_bench.py`).

    python bench/waiting_bench.py [--threads 100000] [--pending 10000] [--singles 1000] [--burst 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import local_stack, log, report_head, running, write_report  # noqa: E402
from bench.scale_memory import Hosts  # noqa: E402
from bench.tables import Row, left, print_table, right  # noqa: E402
from bench.waiting_agent import EXPIRY_VARIABLE  # noqa: E402
from bench.waiting_phases import (  # noqa: E402
    WaitingRun,
    approve_at_once,
    cost_over,
    create_threads,
    pending_by_quantity,
    single_approvals,
    start_purchases,
    users_for,
    waiting_cost,
)

NAMESPACE = "agents-waiting-bench"
QUICK = {"threads": 2000, "pending": 300, "singles": 50, "burst": 200, "window": 15.0}


def stack_env(args: argparse.Namespace) -> dict[str, str]:
    """The stack's configuration: ping mode, the scripted thread class (importable by every worker), no
    per-user limits (one user owns every thread here)."""
    return {
        "AGENTRT_AGENT_CLASS": "bench.waiting_agent:Waiter",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        EXPIRY_VARIABLE: str(args.expiry),
        "CIBA_DELIVERY_MODE": "ping",
        "AGENT_HOSTS": str(args.hosts),
        "AGENT_IDLE_SECONDS": str(args.idle),
        "AGENT_MAX_THREADS_PER_USER": str(args.threads + 1000),
        "AGENTRT_MAX_TURNS_PER_MINUTE": "1000000",
        "AGENTRT_MAX_CONCURRENT_TURNS": "1000",
        **({"CIBA_PING_FALLBACK_SECONDS": str(args.fallback)} if args.fallback else {}),
        **({"AGENT_ALARM_PROBES": "false"} if args.no_probes else {}),
    }


def log_in(authz_url: str, users: list[str]) -> list[str]:
    """Each user's access token from the dev authorization server (one client: thousands of users)."""
    tokens = []
    with httpx.Client(base_url=authz_url, timeout=30) as http:
        for user in users:
            response = http.post("/dev/login", json={"username": user})
            response.raise_for_status()
            tokens.append(response.json()["access_token"])
    return tokens


async def run_phases(args: argparse.Namespace, stack: Any, storage: Path, results: dict[str, Any]) -> None:
    """The phases in turn; `results` fills as they go (kept if one fails)."""
    stack.authz.state.max_requested_expiry = args.expiry  # the dev server lets requests live that long
    # The dev server keeps its requests in one JSON file rewritten at every change: fine for a person's
    # approvals, quadratic at 10,000 (the run spent half an hour in it). The provider is not measured here.
    stack.authz.state.requests_file = None
    tokens = await asyncio.to_thread(log_in, stack.authz.url, users_for(args.pending))
    run = WaitingRun(args, stack, storage, NAMESPACE, tokens, Hosts(storage, NAMESPACE), results)
    log(f"0/5 the empty stack: settling, then {args.window:.0f} s of CPU ...")
    await asyncio.sleep(args.settle)
    run.results["empty_stack"] = await cost_over(args.window)
    await create_threads(run)
    await start_purchases(run)
    await waiting_cost(run)
    async with run.phone() as phone:
        requests = await pending_by_quantity(phone)
    await single_approvals(run, requests)
    await approve_at_once(run, requests)
    run.results["host_stats"] = [{k: v for k, v in s.items() if k != "live_names"} for s in await run.hosts.stats()]
    approvals = args.singles + args.burst
    totals = await run.counts()
    run.results["totals"] = {
        **totals,
        "approvals": approvals,
        "purchases": args.pending,
        "exactly_once": totals["orders"] == approvals and totals["ciba_requests"] == args.pending,
        "safety_net_probes": (await run.scheduler_stats())["probed"],
        "caller_errors": dict(run.errors),
    }


# -- report ------------------------------------------------------------------------------------------------


def p50_p99(summary: dict[str, Any]) -> str:
    return f"p50 {summary['p50_ms']:.0f} ms / p99 {summary['p99_ms']:.0f} ms" if summary.get("n") else "none"


def report_rows(report: dict[str, Any]) -> list[Row]:
    return waiting_rows(report) + approval_rows(report)


def waiting_rows(report: dict[str, Any]) -> list[Row]:
    """Making the threads and purchases, and what the waiting costs."""
    r, p = report["results"], report["params"]
    empty, asleep, waiting = r["empty_stack"], r["threads_asleep"], r["waiting"]
    busiest = list(waiting.get("cpu_pct_of_one_core_by_role", {}).items())
    return [
        ["threads created through the runtime", f"{r['threads']['created']:,}", f"{r['threads']['per_s']} /s"],
        ["purchases started (CIBA ping)", f"{r['purchases']['started']:,}", f"{r['purchases']['per_s']} /s"],
        [
            "empty stack: node CPU / memory",
            f"{empty['node_cpu_pct_of_one_core']}% of a core / {empty['node_mib']:.0f} MiB",
            f"over {p['window']:.0f} s",
        ],
        [
            f"{r['threads']['created']:,} threads asleep, none waiting",
            f"{asleep['node_cpu_pct_of_one_core']}% of a core / {asleep['node_mib']:.0f} MiB",
            f"memory x{asleep['node_mib'] / empty['node_mib']:.3f} of empty (hosts warm: agent code loaded)",
        ],
        [
            f"{p['pending']:,} waiting: node CPU / memory",
            f"{waiting['node_cpu_pct_of_one_core']}% of a core / {waiting['node_mib']:.0f} MiB",
            f"vs threads asleep: {waiting['cpu_pct_over_threads_asleep']:+}% CPU, memory "
            f"x{waiting['memory_vs_threads_asleep']}; vs empty: x{waiting['memory_vs_empty_stack']}; "
            f"{waiting['live_buyers']} buyers live; targets < 5%, within 10%",
        ],
        [
            "safety-net checks meanwhile",
            f"{waiting.get('safety_net_probes', 0):,} probes / {waiting.get('scheduler_wakeups', 0):,} wake-ups",
            "checks for a lost ping, run by the scheduler without waking the thread (`runtime.alarm_probes`)",
        ],
        [
            "CPU by process while waiting (% of a core)",
            ", ".join(f"{role} {pct}" for role, pct in busiest[:4]),
            "the provider's token endpoint is in the driver (dev services)",
        ],
        [
            "memory growth by process (MiB)",
            ", ".join(f"{role} {mib:+.0f}" for role, mib in list(waiting["resident_growth_mib_by_role"].items())[:3]),
            "resident memory, waiting vs empty stack",
        ],
    ]


def approval_rows(report: dict[str, Any]) -> list[Row]:
    """The approvals one at a time and at once, the host change meanwhile, and the totals."""
    r = report["results"]
    single, burst = r["single_approvals"], r["burst"]
    moved, totals = burst["host_change"], r["totals"]
    return [
        [
            f"{single['approval_to_tool_result']['n']:,} approvals one at a time",
            p50_p99(single["approval_to_tool_result"]),
            f"approval -> tool result; {single['asleep_when_approved']} asleep when approved; target p99 <= 150 ms",
        ],
        [
            f"{burst['approved']:,} approvals at once",
            f"drained in {burst['drained_in_s']} s",
            f"{burst['orders']:,} orders; approving took {burst['approving_took_s']} s",
        ],
        [
            f"hosts {moved['hosts']} meanwhile",
            f"{moved['moved_fraction_each_way']:.0%} moved each way",
            f"{moved['grow_s']} s / {moved['shrink_s']} s; {moved['fenced_activations']} fenced (target 0)",
        ],
        [
            "HTTP reads of waiting threads meanwhile",
            p50_p99(burst["http_reads"]["latency"]),
            f"statuses {burst['http_reads']['statuses']}; 5xx target 0",
        ],
        [
            "orders / approvals / CIBA requests / purchases",
            f"{totals['orders']} / {totals['approvals']} / {totals['ciba_requests']} / {totals['purchases']}",
            "exactly once" if totals["exactly_once"] else "MISMATCH",
        ],
        ["errors callers saw", str(sum(totals["caller_errors"].values())), str(totals["caller_errors"] or "")],
    ]


def print_report(report: dict[str, Any]) -> None:
    columns = (left("measure", no_wrap=True), right("value"), left("note"))
    title = f"agentrt waiting benchmark ({report['machine']['cpu_count']} CPUs)"
    print_table(title, columns, report_rows(report), width=170)


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=1_000)
    parser.add_argument("--burst", type=int, default=5_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the CPU is measured over")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the empty stack settles first")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--idle", type=float, default=2.0, help="AGENT_IDLE_SECONDS")
    parser.add_argument("--expiry", type=int, default=3600, help="the CIBA requests' lifetime, seconds")
    parser.add_argument(
        "--fallback",
        type=float,
        default=None,
        help="CIBA_PING_FALLBACK_SECONDS: seconds between a waiting purchase's safety-net checks (default: "
        "three per request's lifetime); 100 is Auth0's 300 s lifetime's pace",
    )
    parser.add_argument(
        "--no-probes", action="store_true", help="AGENT_ALARM_PROBES=false: every safety-net check wakes its thread"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 threads, 300 waiting: a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "waiting_bench.json")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.singles + args.burst > args.pending or args.pending > args.threads:
        parser.error("need singles + burst <= pending <= threads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage = Path(tempfile.mkdtemp(prefix="agentrt-waiting-"))
    stack = local_stack(storage, NAMESPACE, 5, stack_env(args), dev_users=tuple(users_for(args.pending)))
    log(f"starting the stack (Ray, dev services, Serve) on {storage} ...")
    results: dict[str, Any] = {}
    try:
        with running(stack):
            asyncio.run(run_phases(args, stack, storage, results))
    except Exception as exc:  # what was measured before it stopped is kept
        results["failed"] = f"{type(exc).__name__}: {exc}"
        write_report(args.out, {**report_head("waiting_bench", utc_timestamp=True), "results": results})
        raise
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    report = {
        **report_head("waiting_bench", utc_timestamp=True),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    print_report(report)
    write_report(args.out, report)
    return 0 if results["totals"]["exactly_once"] and not results["totals"]["caller_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
