"""CIBA approval-to-token latency against the embedded dev authorization server.

For each of N requests: the client sends a backchannel request, an approver task approves it through the
dev server's JSON API at a random moment, and the client polls honouring the interval (and any
`slow_down`). The latency is from the server's approval time (`decided_at`) to the moment the client holds
the token; with poll mode it is bounded by the interval. Two modes:

- `client`: `CIBAClient.authorize` + `poll` directly.
- `wrapper`: a tool wrapped by `with_async_user_confirmation` (encrypted SQLite store), re-run at each
  interrupt's `next_check_at` as the resumer does; latency ends when the tool has run with its token.

    python bench/ciba_bench.py [--requests 50] [--interval 1] [--max-delay 3]

Prints a table and writes `bench/results/ciba_bench.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from devservers.authz_server import DevAuthorizationServer
from tools.async_confirmation import with_async_user_confirmation
from tools.base import Tool, ToolContext
from tools.ciba_client import Approved, CIBAClient, Pending, SlowDown
from tools.credential_store import SQLiteCredentialStore
from tools.credentials_context import get_ciba_credentials
from tools.interrupts import AuthorizationPendingInterrupt, AuthorizationPollingInterrupt

RESULTS = Path(__file__).resolve().parent / "results" / "ciba_bench.json"
USER = "auth0|alice"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 50 samples p99 is the maximum)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def approve_later(http: httpx.AsyncClient, message: str, delay: float) -> float:
    """Find the request with `message` on the phone and approve it after `delay` s.

    Returns the server's approval time, the start of the latency being measured."""
    deadline = time.time() + 30
    request_id = None
    while request_id is None:
        rows = (await http.get("/dev/ciba/requests", params={"user": USER, "status": "pending"})).json()
        request_id = next((r["id"] for r in rows if r["binding_message"] == message), None)
        if request_id is None:
            if time.time() > deadline:
                raise TimeoutError(message)
            await asyncio.sleep(0.05)
    await asyncio.sleep(delay)
    response = await http.post(f"/dev/ciba/requests/{request_id}/approve")
    response.raise_for_status()
    return float(response.json()["decided_at"])


async def client_flow(client: CIBAClient, message: str) -> tuple[float, str]:
    """Authorize, then poll honouring the interval until approved; (time the token arrived, message)."""
    response = await client.authorize(USER, ["stock:buy"], message, audience="http://localhost:5000/api/checkout")
    interval = response.interval
    next_at = time.time() + interval
    while True:
        await asyncio.sleep(max(0.0, next_at - time.time()))
        result = await client.poll(response.auth_req_id, interval=interval)
        if isinstance(result, Approved):
            return time.time(), message
        if isinstance(result, SlowDown):
            interval, next_at = result.interval, time.time() + result.wait
        elif isinstance(result, Pending):
            next_at = time.time() + interval
        else:
            raise RuntimeError(f"unexpected outcome {result!r}")


class Args(BaseModel):
    n: int


async def wrapper_flow(tool: Tool, n: int) -> tuple[float, str]:
    ctx = ToolContext(tool_call_id=f"call-{n}", thread_id="bench", owner=USER)
    while True:
        try:
            finished_at = await tool.run(Args(n=n), ctx)
            return float(finished_at), f"Buy {n} BENCH"
        except (AuthorizationPendingInterrupt, AuthorizationPollingInterrupt) as interrupt:
            await asyncio.sleep(max(0.0, (interrupt.next_check_at or time.time() + 1) - time.time()))


async def run_mode(mode: str, server: DevAuthorizationServer, requests: int, max_delay: float, seed: int) -> dict:
    rng = random.Random(seed)
    delays = [rng.uniform(0.0, max_delay) for _ in range(requests)]
    client = CIBAClient(issuer=server.issuer, client_id=server.client_id, client_secret=server.client_secret)
    before = (await _stats(server))["polls_by_request"]
    tmp = tempfile.TemporaryDirectory()
    store = SQLiteCredentialStore(Path(tmp.name) / "bench.sqlite3", "bench-key-" + "0" * 32)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        if mode == "client":
            flows = [client_flow(client, f"Buy {n} BENCH") for n in range(requests)]
        else:

            async def buy(n: int) -> float:
                assert get_ciba_credentials() is not None
                return time.time()

            tool = with_async_user_confirmation(
                Tool(buy, name="buy", description="bench", parameters=Args),
                scopes=["stock:buy"],
                binding_message=lambda n: f"Buy {n} BENCH",
                store=store,
                client=client,
            )
            flows = [wrapper_flow(tool, n) for n in range(requests)]
        approvals = [approve_later(http, f"Buy {n} BENCH", delays[n]) for n in range(requests)]
        results = await asyncio.gather(asyncio.gather(*flows), asyncio.gather(*approvals))
    wall = time.perf_counter() - started
    await client.aclose()
    await store.close()
    tmp.cleanup()
    (tokens, approved_at) = results
    latencies = [token_at - decided for (token_at, _), decided in zip(tokens, approved_at, strict=True)]
    after = await _stats(server)
    polls = [count for rid, count in after["polls_by_request"].items() if rid not in before]
    return {
        "mode": mode,
        "requests": requests,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 4),
            "p99": round(percentile(latencies, 99), 4),
            "mean": round(statistics.fmean(latencies), 4),
            "min": round(min(latencies), 4),
            "max": round(max(latencies), 4),
        },
        "polls_per_request": {
            "mean": round(statistics.fmean(polls), 3),
            "max": max(polls),
            "min": min(polls),
        },
        "approval_delay_s": {"mean": round(statistics.fmean(delays), 3), "max": round(max(delays), 3)},
        "wall_s": round(wall, 3),
    }


async def _stats(server: DevAuthorizationServer) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"{server.url}/dev/stats")).json()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--interval", type=int, default=1, help="the dev server's polling interval (s)")
    parser.add_argument("--max-delay", type=float, default=3.0, help="approvals happen uniformly in [0, this] s")
    parser.add_argument("--modes", default="client,wrapper")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()

    server = DevAuthorizationServer(api_audience="https://bench/api", default_interval=options.interval).start()
    try:
        runs = [
            await run_mode(mode, server, options.requests, options.max_delay, options.seed)
            for mode in options.modes.split(",")
        ]
        stats = await _stats(server)
        async with httpx.AsyncClient(timeout=10) as http:
            rows = (await http.get(f"{server.url}/dev/ciba/requests", params={"user": USER})).json()
        slowed = sum(1 for row in rows if row["interval"] != options.interval)
    finally:
        server.stop()

    title = "CIBA approval-to-token latency"
    print(f"{title}, dev server interval {options.interval} s, {options.requests} requests per mode")
    print(f"{'mode':<8} {'p50 s':>7} {'p99 s':>7} {'mean s':>7} {'max s':>7} {'polls/req':>10} {'max polls':>9}")
    for run in runs:
        lat, polls = run["latency_s"], run["polls_per_request"]
        print(
            f"{run['mode']:<8} {lat['p50']:>7.3f} {lat['p99']:>7.3f} {lat['mean']:>7.3f} {lat['max']:>7.3f} "
            f"{polls['mean']:>10.2f} {polls['max']:>9d}"
        )
    report = {
        "benchmark": "ciba_approval_to_token",
        "interval_s": options.interval,
        "max_approval_delay_s": options.max_delay,
        "runs": runs,
        "server_counters": {k: v for k, v in stats.items() if k != "polls_by_request"},
        "requests_slowed_down": slowed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"requests that got slow_down: {slowed} of {len(rows)}")
    print(f"wrote {options.output}")


if __name__ == "__main__":
    asyncio.run(main())
