"""HTTP benchmark: the agentrt ingress against a trivial Ray Serve endpoint, measured in the same run.

Starts the whole stack locally (Ray, dev authorization server, checkout API, offline model, the Serve app)
plus an `echo` Serve application (FastAPI, returns a small JSON document) on the same Serve proxy, then
measures with concurrent HTTP clients on 127.0.0.1:

- `echo`: GET /echo/ (the floor: Serve proxy + one replica hop);
- `echo + actor call`: GET /echo-hop/, a trivial endpoint that awaits one call on a trivial Ray actor
  (the floor of any design that keeps its state in actors behind the ingress, as this one does);
- `messages`: GET /threads/{id}/messages across N threads (proxy -> ingress replica -> the thread's host
  actor: the token checked at the edge and in the agent, the thread read from the agent's read cache);
- `chat turn`: POST /threads/{id}/messages "what is MSFT trading at?" across N threads with the offline
  model (two streamed model calls and a tool call per turn, all persisted).

The loads run in alternating rounds (echo, echo + actor call, messages, turns, then again), so that drift
in the machine's other load hits every row alike. Prints a table (requests/s, p50, p99, and each figure
relative to echo) and writes `bench/results/http_bench.json`.

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
from bench import tables  # noqa: E402
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


def echo_hop_app() -> Any:
    """A trivial endpoint that makes one call on a trivial actor: the cost of one hop behind a replica."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    @ray.remote(num_cpus=0)
    class Trivial:
        async def noop(self) -> None:
            return None

    api = FastAPI()

    @serve.deployment(name="EchoHop", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class EchoHop:
        def __init__(self) -> None:
            self.actor = Trivial.remote()  # type: ignore[attr-defined]

        @api.get("/")
        async def echo(self) -> dict[str, Any]:
            await self.actor.noop.remote()
            return {"ok": True, "messages": []}

    return EchoHop.bind()


async def measure(
    name: str, requests: list[tuple[str, str, dict[str, Any] | None]], headers: dict[str, str], concurrency: int
) -> list[float]:
    """Run `requests` (method, path, json) with `concurrency` workers; return each one's latency (s).
    A response of 400 or more is counted in `ERRORS[name]`."""
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[str, str, dict[str, Any] | None]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=BASE, headers=headers, timeout=120.0, limits=limits) as http:

        async def worker() -> None:
            while True:
                try:
                    method, path, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                response = await http.request(method, path, json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    ERRORS[name] = ERRORS.get(name, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def summary(name: str, latencies: list[float], wall: float, concurrency: int) -> dict[str, Any]:
    return {
        "name": name,
        "requests": len(latencies),
        "errors": ERRORS.get(name, 0),
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


ERRORS: dict[str, int] = {}
BASE = ""


Load = tuple[str, str, list[tuple[str, str, dict[str, Any] | None]], dict[str, str]]
"""(key, row name, requests, headers)."""


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    global BASE
    BASE = stack.urls.api
    token = await dev_login(BASE, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    thread_ids = await create_threads(args.threads, auth)

    warmup = [("GET", "/echo/", None)] * 100 + [("GET", "/echo-hop/", None)] * 100
    await measure("warmup", warmup, {}, args.concurrency)
    await measure("warmup", [("GET", f"/threads/{t}/messages", None) for t in thread_ids], auth, args.concurrency)

    results = []
    for concurrency in (1, args.concurrency):
        print(f"measuring at concurrency {concurrency}, {args.rounds} alternating rounds ...", flush=True)
        results += await measure_rounds(loads(args, thread_ids, auth), args.rounds, min(concurrency, args.threads))
    add_ratios(results)
    return {
        "benchmark": "http_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }


async def create_threads(count: int, auth: dict[str, str]) -> list[str]:
    """`count` threads of alice's, one message each (so reads return a real thread; warms every agent)."""
    print(f"creating {count} threads (one actor each) ...", flush=True)
    async with httpx.AsyncClient(base_url=BASE, headers=auth, timeout=120.0) as http:
        thread_ids = []
        for i in range(count):
            response = await http.post("/threads", json={"thread_id": f"bench-{i:03d}"})
            response.raise_for_status()
            thread_ids.append(response.json()["thread_id"])
        await asyncio.gather(
            *(http.post(f"/threads/{t}/messages", json={"content": "what is AAPL trading at?"}) for t in thread_ids)
        )
    return thread_ids


def loads(args: argparse.Namespace, thread_ids: list[str], auth: dict[str, str]) -> list[Load]:
    """The four rows' requests; reads and turns round-robin over the threads (turns of one thread rarely
    overlap: they would queue behind each other)."""
    count = len(thread_ids)
    reads = [("GET", f"/threads/{thread_ids[i % count]}/messages", None) for i in range(args.requests)]
    turn = {"content": "what is MSFT trading at?"}
    turns = [("POST", f"/threads/{thread_ids[i % count]}/messages", turn) for i in range(args.turns)]
    return [
        ("echo", "echo (trivial Serve endpoint)", [("GET", "/echo/", None)] * args.requests, {}),
        ("hop", "echo + one actor call", [("GET", "/echo-hop/", None)] * args.requests, {}),
        ("messages", f"GET messages ({count} threads)", reads, auth),
        ("turn", f"chat turn, offline model ({count} threads)", turns, auth),
    ]


async def measure_rounds(rows: list[Load], rounds: int, concurrency: int) -> list[dict[str, Any]]:
    """Each row's requests split into `rounds` shares, run row after row, round after round."""
    samples: dict[str, list[float]] = {key: [] for key, *_ in rows}
    walls: dict[str, float] = {key: 0.0 for key, *_ in rows}
    for round_ in range(rounds):
        for key, name, requests, headers in rows:
            share = len(requests) // rounds
            started = time.perf_counter()
            samples[key] += await measure(name, requests[round_ * share : (round_ + 1) * share], headers, concurrency)
            walls[key] += time.perf_counter() - started
    return [{**summary(name, samples[key], walls[key], concurrency), "key": key} for key, name, _, _ in rows]


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each row against echo and against echo + one actor call, at the same concurrency."""
    for row in results:
        base = next(r for r in results if r["key"] == "echo" and r["concurrency"] == row["concurrency"])
        row["rps_vs_echo"] = round(row["rps"] / base["rps"], 3)
        row["p50_vs_echo"] = round(row["p50_ms"] / base["p50_ms"], 2)
        hop = next(r for r in results if r["key"] == "hop" and r["concurrency"] == row["concurrency"])
        row["p50_vs_hop"] = round(row["p50_ms"] / hop["p50_ms"], 2)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def print_table(report: dict[str, Any]) -> None:
    columns = (
        tables.left("load", no_wrap=True),
        *(
            tables.right(header)
            for header in (
                "requests",
                "errors",
                "conc.",
                "req/s",
                "p50 ms",
                "p99 ms",
                "req/s vs echo",
                "p50 vs echo",
                "p50 vs echo+call",
            )
        ),
    )
    rows = [
        [
            row["name"],
            str(row["requests"]),
            str(row["errors"]),
            str(row["concurrency"]),
            f"{row['rps']:.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['rps_vs_echo']:.2f}x",
            f"{row['p50_vs_echo']:.2f}x",
            f"{row['p50_vs_hop']:.2f}x",
        ]
        for row in report["results"]
    ]
    tables.print_table(f"agentrt HTTP benchmark ({report['machine']['cpus']} CPUs)", columns, rows, width=170)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000, help="requests for echo and for GET messages")
    parser.add_argument("--turns", type=int, default=200, help="chat turns")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds each load is split into")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "http_bench.json")
    args = parser.parse_args()

    from ray import serve

    storage = Path(tempfile.mkdtemp(prefix="agentrt-bench-"))
    stack = Stack(StackOptions(port=0, authz_port=None, checkout_port=None, model_port=None, storage_dir=storage))
    print("starting the stack (Ray, dev services, Serve) ...", flush=True)
    stack.start()
    try:
        serve.run(echo_app(), name="echo", route_prefix="/echo", blocking=False)
        serve.run(echo_hop_app(), name="echo-hop", route_prefix="/echo-hop", blocking=False)
        wait_for_http(stack.urls.api + "/echo/", timeout=60)
        wait_for_http(stack.urls.api + "/echo-hop/", timeout=60)
        report = asyncio.run(run(args, stack))
    finally:
        stack.stop()
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
