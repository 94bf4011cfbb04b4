"""Chat benchmark: turn latency with the offline model, and approval-to-answer latency of CIBA purchases.

Starts the whole stack as `agentrt serve` would (`agentrt.stack.Stack`: the dev authorization server, the
checkout API and the offline model on 127.0.0.1, a local Ray cluster configured for them, CIBA poll mode at
interval 1 s), with a fresh temporary storage root, and measures in one run:

1. turn latency: `await agent.send_message(token, "What is MSFT trading at?")` end to end, sequential turns
   round-robin over several `Chat` threads after warm-up (two model calls per turn: the tool call, then the
   answer; split by how many turns the thread had before), the first turn of each new thread on its own (the
   cold path), and, in alternating rounds in the same run:
   - the bare model call: the same first completion request (system prompt, the history, the user message,
     the two tools) made directly with `openai.AsyncOpenAI(base_url=world.model.base_url)`, streamed and
     consumed, with as much history as the turns have at that point (bare conversations kept in step);
   - the bare model pair: that request, then the second one (with the tool call and its result), in a row;
   - a bare Ray async actor round trip (the floor of any agent call);
2. approval latency in CIBA poll mode (interval 1 s): purchases, each in its own thread (warmed up by one
   price question, so that the cold first turns do not load the CPUs), run concurrently in batches; the
   "phone" (the dev server's approval API) approves each at a random moment 0-2 s after its request
   appears; a long-poll watcher (`poll_events`) per thread records when the `tool_result` and the
   final assistant `message` ("Purchased ...") arrive. Reports approval -> tool result / final message (by
   the agent's event clock and as seen by the driver), and the token polls per request from
   `world.stats()["polls_by_request"]` (with any `slow_down`, seen as a grown interval);
3. approval -> final message by delivery mode, in the same run: the whole stack (`agentrt.stack.Stack`:
   the Serve ingress, the dev servers, the offline model) once in poll mode at interval 1 s, once at 5 s
   and once in ping mode; purchases over HTTP one at a time, approved at a random moment of an interval,
   the answer's time read from the thread's file; polls per approval from the dev server's count.

Each purchase asks for a distinct quantity ("Buy 3 shares of MSFT"), so that its CIBA request (binding
message "Buy 3 MSFT") can be told apart from the others of the same user.

Prints a table and writes `bench/results/chat_bench.json`. Phase 1 is in `bench/chat_turns.py`, phases 2
and 3 in `bench/chat_approvals.py`.

    python bench/chat_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/chat_bench.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

from bench.chat_approvals import bench_approvals, bench_deliveries  # noqa: E402
from bench.chat_turns import NAMESPACE, bench_turns  # noqa: E402
from bench.common import (  # noqa: E402
    StackWorld,
    local_stack,
    log,
    ray_session_dir,
    report_head,
    running,
    scan_logs,
    timed_phase,
    write_report,
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


def turn_rows(t: dict[str, Any]) -> list[Row]:
    """Phase 1: the floors, the cold and the warm turn, and how the turn grows with the thread's history."""
    turn = t["turn"]
    rows: list[Row] = [
        latency_row("bare Ray async actor round trip", t["actor"], "floor of any agent call"),
        latency_row(
            "bare model call (1st request), streamed",
            t["model_call"],
            f"{t['model_call']['p50_vs_actor']}x actor p50",
        ),
        latency_row(
            "bare model pair (both requests)",
            t["model_pair"],
            f"tool call, then answer; history as the turns' (up to {t['turns_per_thread']} turns per thread)",
        ),
        latency_row(
            "chat turn: 1st in a new thread (cold)",
            t["first_turn"],
            f"one at a time, after the actor is up; {t['first_turn']['p50_vs_turn']}x warm p50",
        ),
        latency_row(
            "chat turn: send_message (price question)",
            turn,
            f"{t['threads']} threads; p50 {turn['p50_vs_model_call']}x 1 call, {turn['p50_vs_2x_model_call']}x 2 "
            f"calls, {turn['p50_vs_model_pair']}x pair, {turn['p50_vs_actor']}x actor",
        ),
        note_row(
            "  turn - pair (p50)",
            "",
            f"mean {turn['mean_vs_2x_model_call']}x 2 calls, {turn['mean_vs_model_pair']}x pair",
            p50=f"{turn['overhead_vs_model_pair_p50_ms']:.3f}",
        ),
    ]
    slopes = f"{t['turn_ms_per_earlier_turn']} ms per earlier turn (bare pair: {t['model_pair_ms_per_earlier_turn']})"
    for name, stat in t["turn_by_history"].items():
        rows.append(latency_row(f"  turn, {name.replace('_', ' ')}", stat, slopes))
    return rows


def approval_rows(a: dict[str, Any], config: dict[str, Any]) -> list[Row]:
    """Phase 2: from the purchase turn to the final message, and the token polls it took."""
    pp = a["polls_per_request"]
    workers = a["ray_worker_processes"]
    return [
        latency_row(
            "purchase turn: send_message to pending",
            a["send_message_to_pending"],
            f"{a['batch']} at once (batch walls {a['batch_wall_s']} s); "
            f"{workers['count']} Ray worker processes, {workers['rss_mb']} MB RSS",
        ),
        latency_row(
            "approval moment after request created",
            a["approved_after_created"],
            f"random 0-{config['approve_within']} s",
        ),
        latency_row(
            "approval -> tool_result event (agent clock)",
            a["approval_to_tool_result"],
            f"CIBA interval {config['ciba_interval']} s, poll mode",
        ),
        latency_row(
            "  tool_result - next poll slot (approx.)",
            a["tool_result_after_poll_slot"],
            "slot = created + k x interval; the rest is schedule lateness, token, checkout, store",
        ),
        latency_row(
            "approval -> final message event (agent clock)", a["approval_to_message"], "+ the answer's model call"
        ),
        latency_row(
            "approval -> final message seen (poll_events)",
            a["approval_to_observed"],
            f"completed {a['completed']}/{a['purchases']}, orders {a['orders_placed']}, errors {len(a['errors'])}",
        ),
        note_row(
            "token polls per approved request",
            str(a["completed"]),
            f"mean {pp['mean']}, min {pp['min']}, max {pp['max']}, {pp['distribution']}; "
            f"{pp['over_interval_allowance']} over the interval's allowance; final intervals {a['final_intervals_s']}",
        ),
    ]


def delivery_rows(deliveries: list[dict[str, Any]]) -> list[Row]:
    """Phase 3: approval -> final message per delivery mode, each against ping mode's."""
    if not deliveries:
        return []
    ping = next((d for d in deliveries if d["mode"] == "ping"), None)
    rows: list[Row] = [SECTION]
    for d in deliveries:
        s = d["approval_to_final_message"]
        versus = f", p50 {s['p50_ms'] / ping['approval_to_final_message']['p50_ms']:.1f}x ping" if ping else ""
        rows.append(
            latency_row(
                f"approval -> final message, {d['mode']} (interval {d['interval_s']} s)",
                s,
                f"over HTTP, one at a time; polls/approval {d['polls_per_approval']['mean']} "
                f"(max {d['polls_per_approval']['max']}){versus}",
            )
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    """The table, then the purchases that failed and the Ray log lines worth a look."""
    r = report["results"]
    rows = [
        *turn_rows(r["turns"]),
        SECTION,
        *approval_rows(r["approvals"], report["config"]),
        *delivery_rows(r.get("deliveries") or []),
    ]
    console = print_table(machine_title("chat benchmark", report), LATENCY_COLUMNS, rows, width=220)
    for error in r["approvals"]["errors"]:
        console.print(f"  purchase error: {error}", markup=False, highlight=False)
    print_flagged_logs(console, report.get("logs", {}), samples=8)


# -- main --------------------------------------------------------------------------------------------------


async def run(world: Any, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Phases 1 and 2, on the stack `main` started; each phase's seconds in `phases`."""
    results: dict[str, Any] = {}
    phases: dict[str, float] = {}
    log(f"1/3 turn latency ({cfg['turns']} turns over {cfg['threads']} threads, vs bare model and actor) ...")
    results["turns"] = await timed_phase(phases, "turns_s", bench_turns(world, root, cfg))
    log(
        f"2/3 approval latency ({cfg['purchases']} purchases, batches of {cfg['batch']}, "
        f"CIBA interval {cfg['ciba_interval']} s) ..."
    )
    results["approvals"] = await timed_phase(phases, "approvals_s", bench_approvals(world, root, cfg))
    results["phases"] = phases
    return results


def config(quick: bool) -> dict[str, Any]:
    """The run's sizes (`--quick`: a smoke run) and its fixed settings."""
    if quick:
        cfg: dict[str, Any] = {"turns": 20, "threads": 4, "warmup": 3, "rounds": 2, "purchases": 4, "batch": 4}
        cfg["approvals_per_mode"] = 4
    else:
        cfg = {"turns": 100, "threads": 10, "warmup": 10, "rounds": 4, "purchases": 20, "batch": 10}
        cfg["approvals_per_mode"] = 20
    cfg.update(
        ciba_interval=1, approve_within=2.0, phone_interval=0.02, purchase_timeout=30.0, seed=20240601, quick=quick
    )
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chat_bench.json")
    args = parser.parse_args()
    cfg = config(args.quick)

    root = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    log(f"starting the dev services and a local Ray cluster (storage root {root}) ...")
    wall = time.perf_counter()
    env = {"CIBA_DELIVERY_MODE": "poll", "AGENT_IDLE_SECONDS": "600"}
    # Ray with the services' settings in its runtime_env, the dev services, the Serve app
    with running(local_stack(root, NAMESPACE, cfg["ciba_interval"], env), remove=root) as stack:
        session_dir = ray_session_dir()
        results = asyncio.run(run(StackWorld(stack), root, cfg))
    log(f"3/3 approval -> final message by delivery ({cfg['approvals_per_mode']} per mode, over HTTP) ...")
    results["deliveries"] = bench_deliveries(cfg)
    report = {
        **report_head("chat_bench", utc_timestamp=True),
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
