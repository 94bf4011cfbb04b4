"""Scale benchmark: memory follows live threads, sleeping threads wake fast, pending approvals survive sleep.

Starts the whole stack locally (Ray, dev authorization server, checkout API, offline model, the Serve app)
with a short idle time and a live cap small enough to be reached, then, through the HTTP API on 127.0.0.1:

1. baseline: a message to an already-live thread (the reference every latency below is divided by);
2. scale: T threads created one after another with a few at a time (`POST /threads`, then one message each):
   peak live agents, peak and final node memory, host RSS and memory per live agent, time per thread;
3. first message of a new thread (posting creates it) and first message to a hibernated thread: p50/p99;
4. a burst of B threads created at once (`POST /threads` + first message, all concurrently): p50/p99;
5. P threads each left with a pending purchase, hibernated, then all approved at once on the dev
   authorization server: approval-to-final-message p50/p99 (read from the threads' own files, so the
   measurement wakes nobody), orders placed (must be P) and CIBA requests sent (must be P);
6. single approvals, one at a time, each thread asleep when its user approves: approval-to-final-message.

Prints a table and writes `bench/results/scale_bench.json`. Deadlines are taken from "now" at each wait, so
it finishes on a loaded 2-core machine. The phases are in `bench/scale_phases.py`, what they watch (hosts,
memory) in `bench/scale_memory.py`.

    python bench/scale_bench.py [--threads 2000] [--pending 200] [--idle 2] [--max-live 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import local_stack, log, report_head, running, write_report  # noqa: E402
from bench.scale_memory import NAMESPACE, node_used_mib  # noqa: E402
from bench.scale_phases import run_phases  # noqa: E402
from bench.tables import Row, left, print_table, right  # noqa: E402

# -- report ------------------------------------------------------------------------------------------------


def p50_p99(s: dict[str, Any]) -> str:
    return f"p50 {s['p50_ms']:.0f} ms / p99 {s['p99_ms']:.0f} ms"


def latency(r: dict[str, Any], name: str, key: str, target: str = "") -> list[str]:
    """A latency row: p50 / p99, n, and how it compares with a message to a live thread."""
    s = r[key]
    ratio = f", {s['p50_vs_live']}x live" if "p50_vs_live" in s else ""
    return [name, p50_p99(s), f"n={s['n']}{ratio} {target}"]


def scale_rows(report: dict[str, Any]) -> list[Row]:
    """Phase 2 and after: how many threads, how fast, and the memory they took."""
    r, sc = report["results"], report["results"]["scale"]
    return [
        ["threads created (one message each)", str(sc["threads"]), f"{sc['threads_per_s']} threads/s"],
        ["time per thread", f"p50 {sc['per_thread']['p50_ms']:.0f} ms", f"p99 {sc['per_thread']['p99_ms']:.0f} ms"],
        ["peak live agents", str(sc["peak_live_agents"]), f"cap {report['params']['max_live']}"],
        [
            "node memory start / peak / end",
            f"{r['memory_start']['node_mib']:.0f} / {r['memory_end']['peak_node_mib']:.0f} / "
            f"{r['memory_end']['node_mib']:.0f} MiB",
            "target: 2,000 threads within 6 GiB",
        ],
        [
            "host RSS at peak live / after hibernation",
            f"{sc['host_rss_at_peak_live_mib']:.0f} / {sc['after_hibernation']['host_rss_mib']:.0f} MiB",
            f"{sc['after_hibernation']['hosts']} host processes",
        ],
        ["bare Ray actor process RSS", f"{r['bare_ray_actor_rss_mib']:.0f} MiB", "the floor under a host"],
        [
            "memory per live agent (upper bound)",
            f"{sc['mib_per_live_agent_upper_bound']:.2f} MiB",
            "host RSS growth start -> peak / agents added",
        ],
        [
            "Ray worker processes start / end",
            f"{r['memory_start']['ray_processes']} / {sc['after_hibernation']['ray_processes']}",
            "",
        ],
    ]


def approval_rows(r: dict[str, Any]) -> list[Row]:
    """Phases 5 and 6: approval -> answer for sleeping threads, and the exactly-once counts."""
    pa, single = r["pending_approvals"], r["single_approvals"]
    return [
        [
            f"{pa['threads']} approvals ({pa['asleep_when_approved']:.0%} asleep): approval -> answer",
            p50_p99(pa["approval_to_final_message"]),
            "",
        ],
        [
            f"one approval at a time, thread asleep ({single['mode']})",
            p50_p99(single["approval_to_final_message"]),
            "approval -> final answer; target (ping) p99 <= 150 ms",
        ],
        [
            "orders / CIBA requests",
            f"{pa['orders']} / {pa['ciba_requests']}",
            "exactly once" if pa["exactly_once"] else "MISMATCH",
        ],
        *waiting_rows(pa),
    ]


def waiting_rows(pa: dict[str, Any]) -> list[Row]:
    """What the approvals cost while they waited, and the host change made while they were approved."""
    waiting, moved = pa["waiting"], pa["host_change"]
    return [
        [
            f"{pa['threads']} approvals waiting: whole node CPU / memory",
            f"{waiting['node_cpu_pct_of_one_core']}% of a core / {waiting['node_mib']:.0f} MiB",
            f"over {waiting['window_s']:.0f} s; {waiting['live_buyers']} buyers live; target CPU < 5%",
        ],
        [
            f"hosts {moved['hosts']} while approving",
            f"{moved['moved_fraction_each_way']:.0%} moved each way",
            f"{moved['grow_s']} s / {moved['shrink_s']} s; {moved['fenced_activations']} fenced (target 0)",
        ],
    ]


def print_report(report: dict[str, Any]) -> None:
    """The table: every latency against a message to a live thread, with its target where there is one."""
    r = report["results"]
    rows = [
        latency(r, "message to a live thread (reference)", "live_thread_message"),
        *scale_rows(report),
        latency(r, "first message, new thread", "first_message_new_thread", "target p50 <= 500 ms"),
        latency(r, "first message, hibernated thread", "first_message_hibernated_thread", "target p50 <= 300 ms"),
        latency(r, f"burst: {report['params']['burst']} threads at once", "burst_new_threads", "target p50 <= 2 s"),
        *approval_rows(r),
    ]
    columns = (left("measure", no_wrap=True), right("value"), left("note"))
    print_table(f"agentrt scale benchmark ({report['machine']['cpu_count']} CPUs)", columns, rows, width=160)


# -- main --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2000)
    parser.add_argument("--pending", type=int, default=200)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--idle", type=float, default=2.0, help="AGENT_IDLE_SECONDS")
    parser.add_argument("--max-live", type=int, default=40, help="AGENT_MAX_LIVE")
    parser.add_argument("--hosts", type=int, default=2, help="AGENT_HOSTS")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ciba-interval", type=int, default=5, help="the dev server's CIBA polling interval")
    parser.add_argument("--delivery", choices=["ping", "poll"], default="ping", help="CIBA token delivery mode")
    parser.add_argument("--wait-window", type=float, default=60.0, help="seconds the waiting cost is measured")
    parser.add_argument("--quick", action="store_true", help="200 threads, 20 pending: a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale_bench.json")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.pending, args.samples, args.wait_window = 200, 20, 10, 15.0

    storage = Path(tempfile.mkdtemp(prefix="agentrt-scale-"))
    extra = {
        "AGENT_IDLE_SECONDS": str(args.idle),
        "AGENT_MAX_LIVE": str(args.max_live),
        "AGENT_HOSTS": str(args.hosts),
        "AGENT_MAX_THREADS_PER_USER": str(args.threads + args.pending + 1000),
        "CHAT_MAX_PENDING_APPROVALS_PER_USER": str(args.pending),  # every buyer is alice
        "AGENTRT_MAX_TURNS_PER_MINUTE": "100000",  # load from a few users, not abuse
        "AGENTRT_MAX_CONCURRENT_TURNS": "1000",
        "CIBA_DELIVERY_MODE": args.delivery,
    }
    stack = local_stack(storage, NAMESPACE, args.ciba_interval, extra)
    node_before = node_used_mib()
    log("starting the stack (Ray, dev services, Serve) ...")
    with running(stack):
        results = asyncio.run(run_phases(args, stack, storage))
    report = {
        **report_head("scale_bench"),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "node_mib_before_stack": round(node_before, 1),
        "results": results,
    }
    print_report(report)
    write_report(args.out, report)


if __name__ == "__main__":
    threading.current_thread().name = "scale-bench"
    main()
