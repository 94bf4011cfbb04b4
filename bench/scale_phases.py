"""The scale benchmark's six phases (see `bench/scale_bench.py`, which runs them and prints their report),
through the HTTP API on 127.0.0.1: the live-thread reference, T threads, first messages (new and
hibernated threads), a burst, P pending purchases approved at once while asleep, single approvals.

Deadlines are taken from "now" at each wait, so that the run finishes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentrt.client import dev_login
from agentrt.stack import Stack
from bench.common import (
    answered_at,
    approve,
    final_message_at,
    log,
    new_thread_with_message,
    pending_requests,
    ray_worker_pids,
    summarise,
    timed,
    wait_until,
)
from bench.scale_memory import Hosts, Sampler, bare_actor_rss
from bench.scale_waiting import host_change, waiting_cost


@dataclass
class ScaleRun:
    """What the phases share: the options, the stack, the API client, the hosts and their sampler, and the
    results so far."""

    args: argparse.Namespace
    stack: Stack
    storage: Path
    http: httpx.AsyncClient
    hosts: Hosts
    sampler: Sampler
    results: dict[str, Any] = field(default_factory=dict)

    async def orders(self) -> int:
        """Orders the checkout API has placed so far."""
        return (await fetch_json(f"{self.stack.urls.checkout}/stats"))["orders"]

    async def ciba_requests(self) -> int:
        """Backchannel (CIBA) requests the dev authorization server has received so far."""
        return (await fetch_json(f"{self.stack.urls.authz}/dev/stats"))["backchannel_requests"]

    def phone(self) -> httpx.AsyncClient:
        """The user's phone: the dev authorization server's JSON API."""
        return httpx.AsyncClient(base_url=self.stack.urls.authz, timeout=60.0)


async def fetch_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return (await client.get(url)).json()


async def with_concurrency(n: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """`work(i)` for i in 0..n-1, `concurrency` at a time, in order of i."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await work(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def live_reference(run: ScaleRun) -> dict[str, Any]:
    """1. The reference: messages to a thread that is live. Returns the memory state before the scale."""
    http, samples = run.http, run.args.samples
    await new_thread_with_message(http, "warm-0", "what is AAPL trading at?")
    for _ in range(5):
        await timed(http, "POST", "/threads/warm-0/messages", {"content": "what is MSFT trading at?"})
    warm = [
        await timed(http, "POST", "/threads/warm-0/messages", {"content": "what is MSFT at?"}) for _ in range(samples)
    ]
    run.results["live_thread_message"] = summarise(warm)
    idle_state = await run.sampler.sample()
    run.results["memory_start"] = {**idle_state, "ray_processes": len(ray_worker_pids())}
    run.results["bare_ray_actor_rss_mib"] = round(await bare_actor_rss(), 1)
    log(f"1/6 live-thread message p50 {run.results['live_thread_message']['p50_ms']} ms; {idle_state}")
    return idle_state


async def scale_threads(run: ScaleRun) -> None:
    """2. T threads, each created and given one message, a few at a time, memory sampled meanwhile."""
    args, sampler = run.args, run.sampler
    log(f"2/6 creating {args.threads} threads with one message each ({args.concurrency} at a time) ...")
    sampler.start()
    per_thread: list[float] = []

    async def create(i: int) -> None:
        per_thread.append(await new_thread_with_message(run.http, f"scale-{i:05d}", "what is NVDA trading at?"))

    started = time.perf_counter()
    await with_concurrency(args.threads, args.concurrency, create)
    wall = time.perf_counter() - started
    during = await sampler.sample()
    run.results["scale"] = {
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


async def after_hibernation(run: ScaleRun, idle_state: dict[str, Any]) -> None:
    """Once the scale threads hibernated: the memory left, and an upper bound of memory per live agent."""
    await wait_until(
        lambda: run.hosts.none_live("scale-"), timeout=run.args.idle * 4 + 60, what="the scale threads to hibernate"
    )
    settled = await run.sampler.sample()
    scale = run.results["scale"]
    scale["after_hibernation"] = {**settled, "ray_processes": len(ray_worker_pids())}
    # Freed memory is kept by the Python allocator, so RSS does not fall when agents hibernate: the
    # growth from the start (2 live) to the peak, per added live agent, is an upper bound that also
    # counts first-use allocations (the second host's first Chat, connection pools).
    added = max(1, scale["peak_live_agents"] - idle_state["live"])
    growth = scale["host_rss_at_peak_live_mib"] - idle_state["host_rss_mib"]
    scale["mib_per_live_agent_upper_bound"] = round(max(0.0, growth) / added, 3)
    log(f"3/6 first messages (new threads, hibernated threads); after hibernation {settled}")


async def first_messages(run: ScaleRun) -> None:
    """3. First message: to a new thread (posting creates it), and to a hibernated one."""
    args, http = run.args, run.http
    new_first = []
    for i in range(args.samples):
        path = f"/threads/first-{i:03d}/messages"
        new_first.append(await timed(http, "POST", path, {"content": "what is AAPL trading at?"}))
    asleep = [f"scale-{i:05d}" for i in range(0, args.threads, max(1, args.threads // args.samples))][: args.samples]
    woken = []
    for thread_id in asleep:
        path = f"/threads/{thread_id}/messages"
        woken.append(await timed(http, "POST", path, {"content": "what is MSFT trading at?"}))
    run.results["first_message_new_thread"] = summarise(new_first)
    run.results["first_message_hibernated_thread"] = summarise(woken)


async def burst(run: ScaleRun) -> None:
    """4. A burst of B new threads at once."""
    log(f"4/6 a burst of {run.args.burst} threads created at once ...")
    times = await asyncio.gather(
        *(
            new_thread_with_message(run.http, f"burst-{i:03d}", "what is AAPL trading at?")
            for i in range(run.args.burst)
        )
    )
    run.results["burst_new_threads"] = summarise(list(times))


async def wait_mostly_asleep(run: ScaleRun) -> float:
    """In poll mode each buyer wakes for every check (every CIBA interval) and sleeps again after the idle
    time, so about (interval - idle) / interval of them are asleep at any moment: wait until the buyers
    have settled into that rhythm. The share asleep then."""
    args = run.args
    gap = max(args.ciba_interval, 100.0) if args.delivery == "ping" else args.ciba_interval  # timer checks
    expected = max(0.0, (gap + 0.5 - args.idle) / (gap + 0.5))

    async def mostly_asleep() -> float | None:
        awake = sum(1 for n in await run.hosts.live_names() if n.split("/", 1)[1].startswith("buy-"))
        asleep = 1 - awake / args.pending
        return asleep if asleep >= 0.8 * expected else None

    return await wait_until(mostly_asleep, timeout=args.idle * 4 + 120, what="the buyers to hibernate")


async def approve_all_at_once(run: ScaleRun) -> dict[int, float]:
    """Every pending request approved at once; when each was, by purchase quantity."""
    async with run.phone() as phone:
        pending = await pending_requests(phone, "alice")
        by_quantity = {int(r["binding_message"].split()[1]): r["id"] for r in pending if r["binding_message"]}
        approved_at: dict[int, float] = {}

        async def approve_one(quantity: int, request_id: str) -> None:
            approved_at[quantity] = time.time()
            await approve(phone, request_id)

        log(f"   approving {len(by_quantity)} requests at once (all threads asleep)")
        await asyncio.gather(*(approve_one(q, rid) for q, rid in by_quantity.items()))
    return approved_at


async def wait_for_answers(run: ScaleRun, approved_at: dict[int, float], orders_before: int) -> list[float]:
    """Until every approved purchase is placed and every buyer's final message is written; approval ->
    final message of each, read from the threads' files (so the measurement wakes nobody)."""
    from agents.chat import Chat

    pending = run.args.pending

    async def all_ordered() -> bool:
        return await run.orders() - orders_before >= pending

    await wait_until(all_ordered, timeout=300, what="every approved purchase to be placed", interval=0.5)
    finals: list[float] = []

    async def all_answered() -> bool:
        finals.clear()
        for i in range(pending):
            at = final_message_at(Chat.storage_path(run.storage, f"buy-{i:04d}"), approved_at.get(i + 1, 0.0))
            if at is None:
                return False
            finals.append(at - approved_at[i + 1])
        return True

    await wait_until(all_answered, timeout=120, what="every final message", interval=0.5)
    return finals


async def pending_approvals(run: ScaleRun) -> None:
    """5. P pending purchases, hibernated, approved at once: each placed exactly once, and how fast."""
    args = run.args
    log(f"5/6 {args.pending} threads with a pending purchase ...")
    before_orders, before_requests = await run.orders(), await run.ciba_requests()

    async def buy(i: int) -> None:
        await new_thread_with_message(run.http, f"buy-{i:04d}", f"buy {i + 1} shares of MSFT")

    await with_concurrency(args.pending, args.concurrency, buy)
    asleep_share = await wait_mostly_asleep(run)
    waiting = await waiting_cost(run, args.wait_window)
    buyers = [f"Chat/buy-{i:04d}" for i in range(args.pending)]
    moving = asyncio.ensure_future(host_change(run, buyers))  # while the approvals are handled
    approved_at = await approve_all_at_once(run)
    finals = await wait_for_answers(run, approved_at, before_orders)
    moved = await moving
    await asyncio.sleep(2)  # late duplicates, if any, would show up in the counts below
    orders = await run.orders() - before_orders
    requests = await run.ciba_requests() - before_requests
    run.results["pending_approvals"] = {
        "threads": args.pending,
        "approval_to_final_message": summarise(finals),
        "orders": orders,
        "ciba_requests": requests,
        "exactly_once": orders == args.pending and requests == args.pending,
        "asleep_when_approved": round(asleep_share, 3),
        "waiting": waiting,
        "host_change": moved,
        "ciba_interval_s": args.ciba_interval,
        "delivery_mode": args.delivery,
    }


async def single_approvals(run: ScaleRun) -> None:
    """6. One approval at a time, each thread asleep when its user approves."""
    from agents.chat import Chat

    args = run.args
    log(f"6/6 {args.samples} single approvals, one at a time, each thread asleep ({args.delivery} mode) ...")
    singles: list[float] = []
    async with run.phone() as phone:
        for i in range(args.samples):
            thread_id = f"single-{i:03d}"
            await new_thread_with_message(run.http, thread_id, f"buy {i + 1} shares of NVDA")
            await wait_until(lambda t=thread_id: run.hosts.none_live(t), timeout=args.idle * 4 + 30, what="sleep")
            pending = await pending_requests(phone, "alice")
            (request,) = [r for r in pending if r["binding_message"] == f"Buy {i + 1} NVDA"]
            approved = time.time()
            await approve(phone, request["id"])
            path = Chat.storage_path(run.storage, thread_id)
            at = await wait_until(
                lambda p=path, a=approved: answered_at(p, a), timeout=120, what="the answer", interval=0.005
            )
            singles.append(at - approved)
    run.results["single_approvals"] = {"approval_to_final_message": summarise(singles), "mode": args.delivery}


async def run_phases(args: argparse.Namespace, stack: Stack, storage: Path) -> dict[str, Any]:
    """The six phases in turn through one API client, then the memory at the end and each first-message
    latency against the live thread's."""
    token = await dev_login(stack.urls.api, "alice")
    hosts = Hosts(storage)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.urls.api, headers=headers, timeout=300.0, limits=limits) as http:
        run = ScaleRun(args, stack, storage, http, hosts, Sampler(hosts))
        idle_state = await live_reference(run)
        await scale_threads(run)
        await after_hibernation(run, idle_state)
        await first_messages(run)
        await burst(run)
        await pending_approvals(run)
        await single_approvals(run)
        run.sampler.stop()
        final = await run.sampler.sample()
        run.results["memory_end"] = {**final, "peak_node_mib": round(run.sampler.peak_node_mib, 1)}
        run.results["host_stats"] = await hosts.stats()
    results = run.results
    reference = results["live_thread_message"]["p50_ms"]
    for key in ("first_message_new_thread", "first_message_hibernated_thread", "burst_new_threads"):
        results[key]["p50_vs_live"] = round(results[key]["p50_ms"] / reference, 2)
    return results
