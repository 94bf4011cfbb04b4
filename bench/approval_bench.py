"""Approval benchmark: approval-to-final-answer in CIBA poll mode (interval 1 s and 5 s) and in ping mode.

For each mode it starts the whole stack (Ray, dev authorization server, checkout API, offline model, the
Serve app) and, N times one after another: a thread asks to buy, the "phone" (the dev server's approval
API) approves once the request is pending, and the time from the approval to the thread's final answer is
read from the thread's own file (the answer's `created_at`), so measuring wakes nothing. Threads stay
live (a long idle time), so the figures are the approval path itself; `bench/scale_bench.py` measures it
for sleeping threads. Also reports the token polls each approval cost (the dev server counts them).

Prints a table and writes `bench/results/approval_bench.json`.

    python bench/approval_bench.py [--approvals 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentrt.client import dev_login  # noqa: E402
from agentrt.stack import Stack  # noqa: E402
from bench.common import local_stack, log, machine_info, summarise  # noqa: E402
from bench.scale_bench import final_message_at, new_thread_with_message, wait_until  # noqa: E402

MODES = (("poll", 1), ("poll", 5), ("ping", 5))


async def measure(stack: Stack, storage: Path, mode: str, interval: int, approvals: int) -> dict[str, Any]:
    from agents.chat import Chat

    api, dev = stack.urls.api, stack.urls.authz
    token = await dev_login(api, "alice")
    latencies: list[float] = []
    polls: list[int] = []
    async with (
        httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=120.0) as http,
        httpx.AsyncClient(base_url=dev, timeout=60.0) as phone,
    ):
        await new_thread_with_message(http, "warm", "what is MSFT trading at?")
        for i in range(approvals):
            thread_id = f"{mode}-{interval}-{i:03d}"
            await new_thread_with_message(http, thread_id, f"buy {i + 1} shares of MSFT")

            async def pending(quantity: int = i + 1) -> dict[str, Any] | None:
                rows = (await phone.get("/dev/ciba/requests", params={"user": "alice", "status": "pending"})).json()
                return next((r for r in rows if r["binding_message"] == f"Buy {quantity} MSFT"), None)

            request = await wait_until(pending, timeout=30, what="the request", interval=0.05)
            await asyncio.sleep(random.uniform(0, interval))  # the user answers at any moment of an interval
            approved = time.time()
            (await phone.post(f"/dev/ciba/requests/{request['id']}/approve")).raise_for_status()
            path = Chat.storage_path(storage, thread_id)

            async def answered(p: Path = path, a: float = approved) -> float | None:
                return final_message_at(p, a)

            latencies.append(await wait_until(answered, timeout=60, what="the answer", interval=0.005) - approved)
            stats = (await phone.get("/dev/stats")).json()
            polls.append(int(stats["polls_by_request"][request["id"]]))
    return {
        "mode": mode,
        "interval_s": interval,
        "approvals": approvals,
        "approval_to_final_message": summarise(latencies),
        "polls_per_approval": {"mean": round(sum(polls) / len(polls), 2), "max": max(polls)},
    }


def run_mode(mode: str, interval: int, approvals: int) -> dict[str, Any]:
    storage = Path(tempfile.mkdtemp(prefix=f"agentrt-approvals-{mode}-"))
    extra = {"CIBA_DELIVERY_MODE": mode, "AGENT_IDLE_SECONDS": "600", "CIBA_PING_FALLBACK_SECONDS": "30"}
    stack = local_stack(storage, f"agents-approval-bench-{mode}-{interval}", interval, extra)
    log(f"{mode} mode, interval {interval} s: starting the stack ...")
    stack.start()
    try:
        return asyncio.run(measure(stack, storage, mode, interval, approvals))
    finally:
        stack.stop()


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"agentrt approval benchmark ({report['machine']['cpu_count']} CPUs)")
    for column in ("mode", "interval", "approvals", "p50 ms", "p99 ms", "max ms", "polls/approval", "p50 vs ping"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    ping = next(r for r in report["results"] if r["mode"] == "ping")["approval_to_final_message"]["p50_ms"]
    for row in report["results"]:
        s = row["approval_to_final_message"]
        table.add_row(
            row["mode"],
            f"{row['interval_s']} s",
            str(row["approvals"]),
            f"{s['p50_ms']:.0f}",
            f"{s['p99_ms']:.0f}",
            f"{s['max_ms']:.0f}",
            f"{row['polls_per_approval']['mean']} (max {row['polls_per_approval']['max']})",
            f"{s['p50_ms'] / ping:.1f}x",
        )
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--approvals", type=int, default=20, help="approvals per mode")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "approval_bench.json")
    args = parser.parse_args()
    results = [run_mode(mode, interval, args.approvals) for mode, interval in MODES]
    report = {
        "benchmark": "approval_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "params": {"approvals": args.approvals, "modes": [list(m) for m in MODES]},
        "results": results,
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
