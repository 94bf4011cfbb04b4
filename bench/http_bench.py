"""HTTP benchmark: the agentrt ingress against a trivial Ray Serve endpoint, measured in the same run.

Starts the whole stack locally (Ray, dev authorization server, checkout API, offline model, the Serve app)
plus an `echo` Serve application (FastAPI, returns a small JSON document) on the same Serve proxy, then
measures with concurrent HTTP clients on 127.0.0.1:

- `echo`: GET /echo/ (the floor: Serve proxy + one replica hop);
- `messages`: GET /threads/{id}/messages across N threads (proxy -> ingress replica -> thread actor:
  JWT verification + a SQLite read);
- `chat turn`: POST /threads/{id}/messages "what is MSFT trading at?" across N threads with the offline
  model (two streamed model calls and a tool call per turn, all persisted).

Prints a table (requests/s, p50, p99, and each figure relative to echo) and writes
`bench/results/http_bench.json`.

    python bench/http_bench.py [--threads 50] [--requests 1000] [--turns 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentrt.client import dev_login  # noqa: E402
from agentrt.stack import Stack, StackOptions, wait_for_http  # noqa: E402
from bench.common import percentile  # noqa: E402


def echo_app() -> Any:
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Echo", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Echo:
        @api.get("/")
        async def echo(self) -> dict[str, Any]:
            return {"ok": True, "messages": []}

    return Echo.bind()


async def measure(
    name: str, requests: list[tuple[str, str, dict[str, Any] | None]], headers: dict[str, str], concurrency: int
) -> dict[str, Any]:
    """Run `requests` (method, path, json) with `concurrency` workers; per-thread order is preserved by
    giving each worker the requests of whole threads when they share a path."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[tuple[str, str, dict[str, Any] | None]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=BASE, headers=headers, timeout=120.0, limits=limits) as http:

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    method, path, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                response = await http.request(method, path, json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    errors += 1

        wall = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - wall
    return {
        "name": name,
        "requests": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


BASE = ""


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    global BASE
    BASE = stack.urls.api
    token = await dev_login(BASE, "alice")
    auth = {"Authorization": f"Bearer {token}"}

    print(f"creating {args.threads} threads (one actor each) ...", flush=True)
    async with httpx.AsyncClient(base_url=BASE, headers=auth, timeout=120.0) as http:
        thread_ids = []
        for i in range(args.threads):
            response = await http.post("/threads", json={"thread_id": f"bench-{i:03d}"})
            response.raise_for_status()
            thread_ids.append(response.json()["thread_id"])
        # one message each so the reads return a real thread; also warms every actor and JWKS cache
        await asyncio.gather(
            *(http.post(f"/threads/{t}/messages", json={"content": "what is AAPL trading at?"}) for t in thread_ids)
        )

    warmup = [("GET", "/echo/", None)] * 100
    await measure("warmup", warmup, {}, args.concurrency)
    await measure("warmup", [("GET", f"/threads/{t}/messages", None) for t in thread_ids], auth, args.concurrency)

    echo = [("GET", "/echo/", None)] * args.requests
    reads = [("GET", f"/threads/{thread_ids[i % len(thread_ids)]}/messages", None) for i in range(args.requests)]
    # round-robin over the threads: turns of one thread rarely overlap (they would queue behind each other)
    turns = [
        ("POST", f"/threads/{thread_ids[i % len(thread_ids)]}/messages", {"content": "what is MSFT trading at?"})
        for i in range(args.turns)
    ]
    loads = [
        ("echo", "echo (trivial Serve endpoint)", echo, {}),
        ("messages", f"GET messages ({args.threads} threads)", reads, auth),
        ("turn", f"chat turn, offline model ({args.threads} threads)", turns, auth),
    ]
    results = []
    for concurrency in (1, args.concurrency):
        for key, name, requests, headers in loads:
            count = len(requests) if concurrency > 1 else max(20, len(requests) // 5)
            print(f"measuring {name} at concurrency {concurrency} ...", flush=True)
            row = await measure(name, requests[:count], headers, min(concurrency, args.threads))
            row["key"] = key
            results.append(row)
    for row in results:
        base = next(r for r in results if r["key"] == "echo" and r["concurrency"] == row["concurrency"])
        row["rps_vs_echo"] = round(row["rps"] / base["rps"], 3)
        row["p50_vs_echo"] = round(row["p50_ms"] / base["p50_ms"], 2)
    return {
        "benchmark": "http_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"agentrt HTTP benchmark ({report['machine']['cpus']} CPUs)")
    for column in (
        "load",
        "requests",
        "errors",
        "conc.",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req/s vs echo",
        "p50 vs echo",
    ):
        table.add_column(column, justify="left" if column == "load" else "right", no_wrap=column == "load")
    for row in report["results"]:
        table.add_row(
            row["name"],
            str(row["requests"]),
            str(row["errors"]),
            str(row["concurrency"]),
            f"{row['rps']:.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['rps_vs_echo']:.2f}x",
            f"{row['p50_vs_echo']:.1f}x",
        )
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000, help="requests for echo and for GET messages")
    parser.add_argument("--turns", type=int, default=200, help="chat turns")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "http_bench.json")
    args = parser.parse_args()

    from ray import serve

    storage = Path(tempfile.mkdtemp(prefix="agentrt-bench-"))
    stack = Stack(StackOptions(port=0, authz_port=None, checkout_port=None, model_port=None, storage_dir=storage))
    print("starting the stack (Ray, dev services, Serve) ...", flush=True)
    stack.start()
    try:
        serve.run(echo_app(), name="echo", route_prefix="/echo", blocking=False)
        wait_for_http(stack.urls.api + "/echo/", timeout=60)
        report = asyncio.run(run(args, stack))
    finally:
        stack.stop()
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
