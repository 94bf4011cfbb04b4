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
   measurement wakes nobody), orders placed (must be P) and CIBA requests sent (must be P).

Prints a table and writes `bench/results/scale_bench.json`. Deadlines are taken from "now" at each wait, so
it finishes on a loaded 2-core machine.

    python bench/scale_bench.py [--threads 2000] [--pending 200] [--idle 2] [--max-live 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentrt.client import dev_login  # noqa: E402
from agentrt.stack import Stack  # noqa: E402
from bench.common import (  # noqa: E402
    final_message_at,
    local_stack,
    log,
    machine_info,
    new_thread_with_message,
    rss_mib,
    summarise,
    timed,
    wait_until,
)

NAMESPACE = "agents-scale-bench"


# -- measuring memory --------------------------------------------------------------------------------------


def node_used_mib() -> float:
    """Memory in use on the node (MemTotal - MemAvailable), MiB."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0])
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


def ray_worker_count() -> int:
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes().startswith(b"ray::"):
                count += 1
        except OSError:
            continue
    return count


class Hosts:
    """The storage root's host actors: live agents and their processes' memory."""

    def __init__(self, storage_dir: Path) -> None:
        self.storage_dir = storage_dir

    async def stats(self) -> list[dict[str, Any]]:
        import ray

        from runtime.placement import host_count, host_name

        out = []
        for slot in range(host_count(self.storage_dir.resolve(), 2)):
            try:
                handle = ray.get_actor(host_name(self.storage_dir.resolve(), slot), namespace=NAMESPACE)
                out.append(await handle.stats.remote())
            except Exception:
                continue
        return out


class Sampler:
    """Samples node memory, host RSS and live agents every `interval` s in the background; keeps peaks."""

    def __init__(self, hosts: Hosts, interval: float = 0.5) -> None:
        self.hosts = hosts
        self.interval = interval
        self.peak_node_mib = 0.0
        self.peak_live = 0
        self.peak_host_rss_mib = 0.0
        self.rss_at_peak_live = 0.0
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> dict[str, Any]:
        stats = await self.hosts.stats()
        live = sum(s["live"] + s["leaving"] for s in stats)
        rss = sum(rss_mib(s["pid"]) for s in stats)
        node = node_used_mib()
        self.peak_node_mib = max(self.peak_node_mib, node)
        self.peak_host_rss_mib = max(self.peak_host_rss_mib, rss)
        if live >= self.peak_live:
            self.peak_live, self.rss_at_peak_live = live, rss
        return {"live": live, "host_rss_mib": rss, "node_mib": node, "hosts": len(stats)}

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                pass
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


# -- the phases ----------------------------------------------------------------------------------------------


async def fetch_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return (await client.get(url)).json()


async def bare_actor_rss() -> float:
    """RSS of an empty Ray actor process: the floor under any host."""
    import ray

    @ray.remote(num_cpus=0)
    class Bare:
        def pid(self) -> int:
            return os.getpid()

    actor = Bare.remote()
    try:
        return rss_mib(await actor.pid.remote())
    finally:
        ray.kill(actor)


async def live_names(hosts: Hosts) -> set[str]:
    return {name for stats in await hosts.stats() for name in stats["live_names"]}


async def run(args: argparse.Namespace, stack: Stack, storage: Path) -> dict[str, Any]:
    api, dev = stack.urls.api, stack.urls.authz
    token = await dev_login(api, "alice")
    hosts = Hosts(storage)
    sampler = Sampler(hosts)
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=300.0, limits=limits
    ) as http:
        # 1. the reference: messages to a thread that is live
        await new_thread_with_message(http, "warm-0", "what is AAPL trading at?")
        for _ in range(5):
            await timed(http, "POST", "/threads/warm-0/messages", {"content": "what is MSFT trading at?"})
        warm = [
            await timed(http, "POST", "/threads/warm-0/messages", {"content": "what is MSFT at?"})
            for _ in range(args.samples)
        ]
        results["live_thread_message"] = summarise(warm)
        idle_state = await sampler.sample()
        results["memory_start"] = {**idle_state, "ray_processes": ray_worker_count()}
        results["bare_ray_actor_rss_mib"] = round(await bare_actor_rss(), 1)
        log(f"1/6 live-thread message p50 {results['live_thread_message']['p50_ms']} ms; {idle_state}")

        # 2. T threads, each created and given one message, a few at a time
        log(f"2/6 creating {args.threads} threads with one message each ({args.concurrency} at a time) ...")
        sampler.start()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.threads):
            queue.put_nowait(i)
        per_thread: list[float] = []

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                per_thread.append(await new_thread_with_message(http, f"scale-{i:05d}", "what is NVDA trading at?"))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
        during = await sampler.sample()
        results["scale"] = {
            "threads": args.threads,
            "wall_s": round(wall, 2),
            "threads_per_s": round(args.threads / wall, 1),
            "per_thread": summarise(per_thread),
            "peak_live_agents": sampler.peak_live,
            "peak_node_mib": round(sampler.peak_node_mib, 1),
            "peak_host_rss_mib": round(sampler.peak_host_rss_mib, 1),
            "host_rss_at_peak_live_mib": round(sampler.rss_at_peak_live, 1),
            "at_end": during,
        }
        log(f"   {args.threads} threads in {wall:.1f}s; peak live {sampler.peak_live}; {during}")

        # 3. first message: to a new thread (posting creates it), and to a hibernated one
        await wait_until(
            lambda: _none_live(hosts, "scale-"), timeout=args.idle * 4 + 60, what="the scale threads to hibernate"
        )
        settled = await sampler.sample()
        results["scale"]["after_hibernation"] = {**settled, "ray_processes": ray_worker_count()}
        # Freed memory is kept by the Python allocator, so RSS does not fall when agents hibernate: the
        # growth from the start (2 live) to the peak, per added live agent, is an upper bound that also
        # counts first-use allocations (the second host's first Chat, connection pools).
        added = max(1, results["scale"]["peak_live_agents"] - idle_state["live"])
        growth = results["scale"]["host_rss_at_peak_live_mib"] - idle_state["host_rss_mib"]
        results["scale"]["mib_per_live_agent_upper_bound"] = round(max(0.0, growth) / added, 3)
        log(f"3/6 first messages (new threads, hibernated threads); after hibernation {settled}")
        new_first = []
        for i in range(args.samples):
            path = f"/threads/first-{i:03d}/messages"
            new_first.append(await timed(http, "POST", path, {"content": "what is AAPL trading at?"}))
        asleep = [f"scale-{i:05d}" for i in range(0, args.threads, max(1, args.threads // args.samples))][
            : args.samples
        ]
        woken = []
        for thread_id in asleep:
            path = f"/threads/{thread_id}/messages"
            woken.append(await timed(http, "POST", path, {"content": "what is MSFT trading at?"}))
        results["first_message_new_thread"] = summarise(new_first)
        results["first_message_hibernated_thread"] = summarise(woken)

        # 4. a burst of B new threads at once
        log(f"4/6 a burst of {args.burst} threads created at once ...")
        burst = await asyncio.gather(
            *(new_thread_with_message(http, f"burst-{i:03d}", "what is AAPL trading at?") for i in range(args.burst))
        )
        results["burst_new_threads"] = summarise(list(burst))

        # 5. P pending purchases, hibernated, approved at once
        log(f"5/6 {args.pending} threads with a pending purchase ...")
        before_orders = (await fetch_json(f"{stack.urls.checkout}/stats"))["orders"]
        before_requests = (await fetch_json(f"{dev}/dev/stats"))["backchannel_requests"]
        queue = asyncio.Queue()
        for i in range(args.pending):
            queue.put_nowait(i)

        async def buyer() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await new_thread_with_message(http, f"buy-{i:04d}", f"buy {i + 1} shares of MSFT")

        await asyncio.gather(*(buyer() for _ in range(args.concurrency)))

        # In poll mode each one wakes for every check (every CIBA interval) and sleeps again after the idle
        # time, so about (interval - idle) / interval of them are asleep at any moment: approve once the
        # buyers have settled into that rhythm.
        gap = max(args.ciba_interval, 30.0) if args.delivery == "ping" else args.ciba_interval  # timer checks
        expected = max(0.0, (gap + 0.5 - args.idle) / (gap + 0.5))

        async def mostly_asleep() -> float | None:
            awake = sum(1 for n in await live_names(hosts) if n.split("/", 1)[1].startswith("buy-"))
            asleep = 1 - awake / args.pending
            return asleep if asleep >= 0.8 * expected else None

        asleep_share = await wait_until(mostly_asleep, timeout=args.idle * 4 + 120, what="the buyers to hibernate")
        async with httpx.AsyncClient(base_url=dev, timeout=60.0) as phone:
            pending = (await phone.get("/dev/ciba/requests", params={"user": "alice", "status": "pending"})).json()
            by_quantity = {int(r["binding_message"].split()[1]): r["id"] for r in pending if r["binding_message"]}
            approved_at: dict[int, float] = {}

            async def approve(quantity: int, request_id: str) -> None:
                approved_at[quantity] = time.time()
                (await phone.post(f"/dev/ciba/requests/{request_id}/approve")).raise_for_status()

            log(f"   approving {len(by_quantity)} requests at once (all threads asleep)")
            await asyncio.gather(*(approve(q, rid) for q, rid in by_quantity.items()))

        async def all_ordered() -> bool:
            orders = (await fetch_json(f"{stack.urls.checkout}/stats"))["orders"]
            return orders - before_orders >= args.pending

        await wait_until(all_ordered, timeout=300, what="every approved purchase to be placed", interval=0.5)
        from agents.chat import Chat

        finals: list[float] = []

        async def all_answered() -> bool:
            finals.clear()
            for i in range(args.pending):
                at = final_message_at(Chat.storage_path(storage, f"buy-{i:04d}"), approved_at.get(i + 1, 0.0))
                if at is None:
                    return False
                finals.append(at - approved_at[i + 1])
            return True

        await wait_until(all_answered, timeout=120, what="every final message", interval=0.5)
        await asyncio.sleep(2)  # late duplicates, if any, would show up in the counts below
        orders = (await fetch_json(f"{stack.urls.checkout}/stats"))["orders"] - before_orders
        requests = (await fetch_json(f"{dev}/dev/stats"))["backchannel_requests"] - before_requests
        results["pending_approvals"] = {
            "threads": args.pending,
            "approval_to_final_message": summarise(finals),
            "orders": orders,
            "ciba_requests": requests,
            "exactly_once": orders == args.pending and requests == args.pending,
            "asleep_when_approved": round(asleep_share, 3),
            "ciba_interval_s": args.ciba_interval,
            "delivery_mode": args.delivery,
        }

        # 6. one approval at a time, each thread asleep when its user approves
        log(f"6/6 {args.samples} single approvals, one at a time, each thread asleep ({args.delivery} mode) ...")
        singles: list[float] = []
        async with httpx.AsyncClient(base_url=dev, timeout=60.0) as phone:
            for i in range(args.samples):
                thread_id = f"single-{i:03d}"
                await new_thread_with_message(http, thread_id, f"buy {i + 1} shares of NVDA")
                await wait_until(lambda t=thread_id: _none_live(hosts, t), timeout=args.idle * 4 + 30, what="sleep")
                pending = (await phone.get("/dev/ciba/requests", params={"user": "alice", "status": "pending"})).json()
                (request,) = [r for r in pending if r["binding_message"] == f"Buy {i + 1} NVDA"]
                approved = time.time()
                (await phone.post(f"/dev/ciba/requests/{request['id']}/approve")).raise_for_status()
                path = Chat.storage_path(storage, thread_id)
                at = await wait_until(
                    lambda p=path, a=approved: _final_at(p, a), timeout=120, what="the answer", interval=0.005
                )
                singles.append(at - approved)
        results["single_approvals"] = {"approval_to_final_message": summarise(singles), "mode": args.delivery}
        sampler.stop()
        final = await sampler.sample()
        results["memory_end"] = {**final, "peak_node_mib": round(sampler.peak_node_mib, 1)}
        results["host_stats"] = await hosts.stats()
    reference = results["live_thread_message"]["p50_ms"]
    for key in ("first_message_new_thread", "first_message_hibernated_thread", "burst_new_threads"):
        results[key]["p50_vs_live"] = round(results[key]["p50_ms"] / reference, 2)
    return results


async def _final_at(path: Path, after: float) -> float | None:
    return final_message_at(path, after)


async def _none_live(hosts: Hosts, prefix: str) -> bool:
    return not any(name.split("/", 1)[1].startswith(prefix) for name in await live_names(hosts))


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    r = report["results"]
    table = Table(title=f"agentrt scale benchmark ({report['machine']['cpu_count']} CPUs)")
    table.add_column("measure", no_wrap=True)
    table.add_column("value", justify="right")
    table.add_column("note")

    def latency(name: str, key: str, target: str = "") -> None:
        s = r[key]
        ratio = f", {s['p50_vs_live']}x live" if "p50_vs_live" in s else ""
        table.add_row(name, f"p50 {s['p50_ms']:.0f} ms / p99 {s['p99_ms']:.0f} ms", f"n={s['n']}{ratio} {target}")

    latency("message to a live thread (reference)", "live_thread_message")
    sc = r["scale"]
    table.add_row("threads created (one message each)", str(sc["threads"]), f"{sc['threads_per_s']} threads/s")
    table.add_row(
        "time per thread", f"p50 {sc['per_thread']['p50_ms']:.0f} ms", f"p99 {sc['per_thread']['p99_ms']:.0f} ms"
    )
    table.add_row("peak live agents", str(sc["peak_live_agents"]), f"cap {report['params']['max_live']}")
    table.add_row(
        "node memory start / peak / end",
        f"{r['memory_start']['node_mib']:.0f} / {r['memory_end']['peak_node_mib']:.0f} / "
        f"{r['memory_end']['node_mib']:.0f} MiB",
        "target: 2,000 threads within 6 GiB",
    )
    table.add_row(
        "host RSS at peak live / after hibernation",
        f"{sc['host_rss_at_peak_live_mib']:.0f} / {sc['after_hibernation']['host_rss_mib']:.0f} MiB",
        f"{sc['after_hibernation']['hosts']} host processes",
    )
    table.add_row("bare Ray actor process RSS", f"{r['bare_ray_actor_rss_mib']:.0f} MiB", "the floor under a host")
    table.add_row(
        "memory per live agent (upper bound)",
        f"{sc['mib_per_live_agent_upper_bound']:.2f} MiB",
        "host RSS growth start -> peak / agents added",
    )
    table.add_row(
        "Ray worker processes start / end",
        f"{r['memory_start']['ray_processes']} / {sc['after_hibernation']['ray_processes']}",
        "",
    )
    latency("first message, new thread", "first_message_new_thread", "target p50 <= 500 ms")
    latency("first message, hibernated thread", "first_message_hibernated_thread", "target p50 <= 300 ms")
    latency(f"burst: {report['params']['burst']} threads at once", "burst_new_threads", "target p50 <= 2 s")
    pa = r["pending_approvals"]
    a2f = pa["approval_to_final_message"]
    table.add_row(
        f"{pa['threads']} approvals ({pa['asleep_when_approved']:.0%} asleep): approval -> answer",
        f"p50 {a2f['p50_ms']:.0f} ms / p99 {a2f['p99_ms']:.0f} ms",
        "",
    )
    single = r["single_approvals"]["approval_to_final_message"]
    table.add_row(
        f"one approval at a time, thread asleep ({r['single_approvals']['mode']})",
        f"p50 {single['p50_ms']:.0f} ms / p99 {single['p99_ms']:.0f} ms",
        "approval -> final answer; target (ping) p99 <= 150 ms",
    )
    table.add_row(
        "orders / CIBA requests",
        f"{pa['orders']} / {pa['ciba_requests']}",
        "exactly once" if pa["exactly_once"] else "MISMATCH",
    )
    Console(width=160).print(table)


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
    parser.add_argument("--quick", action="store_true", help="200 threads, 20 pending: a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale_bench.json")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.pending, args.samples = 200, 20, 10

    storage = Path(tempfile.mkdtemp(prefix="agentrt-scale-"))
    extra = {
        "AGENT_IDLE_SECONDS": str(args.idle),
        "AGENT_MAX_LIVE": str(args.max_live),
        "AGENT_HOSTS": str(args.hosts),
        "AGENT_MAX_THREADS_PER_USER": str(args.threads + args.pending + 1000),
        "CIBA_DELIVERY_MODE": args.delivery,
    }
    stack = local_stack(storage, NAMESPACE, args.ciba_interval, extra)
    node_before = node_used_mib()
    log("starting the stack (Ray, dev services, Serve) ...")
    stack.start()
    try:
        results = asyncio.run(run(args, stack, storage))
    finally:
        stack.stop()
    report = {
        "benchmark": "scale_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "node_mib_before_stack": round(node_before, 1),
        "results": results,
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    threading.current_thread().name = "scale-bench"
    main()
