"""The waiting benchmark's phases (see `bench/waiting_bench.py`, which runs them and prints the report).

Threads are made and purchases started through the runtime's handles (`get_agent(Waiter, id)`), not over
HTTP and not through a model; the users approve on the dev authorization server's API (their phone), its
ping reaches the HTTP ingress, which wakes the thread. What a phase measures, it reads from the threads'
own files, the dev server's and the checkout's counters, and the hosts' stats, so measuring wakes nobody.

Deadlines are taken from "now" at each wait, so that a run finishes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import approve, log, summarise, wait_until
from bench.scale_memory import Hosts, cpu_seconds_by_role, node_used_mib, resident_mib_by_role
from bench.scale_phases import with_concurrency
from bench.scale_waiting import busy_seconds

APPROVING_PHONES = 16
"""Users approving at the same moment. The dev server sends each ping from a new connection on a thread of
its own: 64 at a time, 5,000 approvals left hundreds of pings dropped by the ingress (ReadError)."""

BUYER_SHARE_LIVE_ASLEEP = 0.01
"""The buyers count as asleep when at most this share of them is live."""


@dataclass
class WaitingRun:
    """What the phases share: options, the stack, the user's token, the hosts, the results so far."""

    args: argparse.Namespace
    stack: Any
    storage: Path
    namespace: str
    tokens: list[str]
    """One per user; thread i belongs to user `owner_of(i)`."""
    hosts: Hosts
    results: dict[str, Any] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    """Errors callers saw (handle calls and HTTP 5xx), by kind: target none."""

    def thread(self, i: int) -> Any:
        from bench.waiting_agent import Waiter
        from runtime import get_agent

        return get_agent(Waiter, thread_id(i), namespace=self.namespace, storage_dir=self.storage)

    def token_of(self, i: int) -> str:
        return self.tokens[owner_of(i, len(self.tokens))]

    def phone(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        return httpx.AsyncClient(base_url=self.stack.authz.url, timeout=60, limits=limits)

    async def counts(self) -> dict[str, int]:
        """Orders placed (checkout) and CIBA requests received (dev authorization server) so far."""
        async with httpx.AsyncClient(timeout=30) as http:
            orders = (await http.get(f"{self.stack.urls.checkout}/stats")).json()["orders"]
            requests = (await http.get(f"{self.stack.urls.authz}/dev/stats")).json()["backchannel_requests"]
        return {"orders": orders, "ciba_requests": requests}

    async def live_buyers(self) -> int:
        pending = {thread_id(i) for i in range(self.args.pending)}
        return sum(1 for name in await self.hosts.live_names() if name.split("/", 1)[1] in pending)

    async def scheduler_stats(self) -> dict[str, int]:
        """The root's alarm scheduler: wake-ups made, and safety-net checks its probes ran without one."""
        import ray

        from runtime.placement import scheduler_name

        scheduler = ray.get_actor(scheduler_name(self.storage.resolve()), namespace=self.namespace)
        return await scheduler.stats.remote()

    async def hosts_quiet(self) -> bool:
        """At most a handful of agents live (the rest asleep): a probe for `wait_until`."""
        return len(await self.hosts.live_names()) <= 8


PURCHASES_PER_USER = 4
"""Under the product's limit of approvals waiting per user (`CHAT_MAX_PENDING_APPROVALS_PER_USER`, 5)."""


def thread_id(i: int) -> str:
    return f"w{i:06d}"


def users_for(pending: int) -> list[str]:
    """The users a run needs: one per `PURCHASES_PER_USER` purchases."""
    return [f"waiter{u}" for u in range(max(1, -(-pending // PURCHASES_PER_USER)))]


def owner_of(i: int, users: int) -> int:
    """Thread i's user: the buyers (the first threads) 4 to a user, the others spread over every user."""
    return (i // PURCHASES_PER_USER) % users


def tool_result_at(path: Path) -> float | None:
    """When the thread's purchase got its result (its own file, read-only), or None if not yet."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(
                "SELECT updated_at FROM tool_calls WHERE name = 'buy_stock' AND state = 'result'"
            ).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


async def guarded(run: WaitingRun, what: str, call: Any) -> Any:
    """`call` awaited; an error a caller would see is counted (by kind), not raised."""
    try:
        return await call
    except Exception as exc:
        run.errors[f"{what}: {type(exc).__name__}"] += 1
        return None


# -- making threads and purchases ------------------------------------------------------------------------


async def create_threads(run: WaitingRun) -> None:
    """T threads, each claimed by its user (created on file), C at a time; they fall asleep on their own."""
    args = run.args
    log(f"1/5 creating {args.threads:,} threads through the runtime, {args.concurrency} at a time ...")
    started, done = time.monotonic(), 0

    async def create(i: int) -> None:
        nonlocal done
        await guarded(run, "claim", run.thread(i).claim(run.token_of(i)))
        done += 1
        if done % 10_000 == 0:
            log(f"   {done:,} threads, {done / (time.monotonic() - started):.0f}/s")

    await with_concurrency(args.threads, args.concurrency, create)
    seconds = time.monotonic() - started
    run.results["threads"] = {"created": args.threads, "seconds": round(seconds, 1)}
    run.results["threads"]["per_s"] = round(args.threads / seconds, 1)
    await wait_until(run.hosts_quiet, timeout=args.idle * 4 + 300, what="the new threads to fall asleep", interval=1)
    log(f"   {args.threads:,} threads asleep, nothing pending: {args.window:.0f} s of CPU ...")
    run.results["threads_asleep"] = await cost_over(args.window)


async def start_purchases(run: WaitingRun) -> None:
    """P of the threads each start a purchase (one turn: the scripted model calls `buy_stock`, the CIBA
    request goes out, the call waits); then every buyer falls asleep."""
    args = run.args
    log(f"2/5 starting {args.pending:,} purchases (CIBA, ping mode) ...")
    started = time.monotonic()

    async def buy(i: int) -> None:
        messages = await guarded(run, "send_message", run.thread(i).send_message(run.token_of(i), f"buy {i + 1}"))
        calls = [c for m in messages or [] for c in m.tool_calls or []]
        if [c.state for c in calls] != ["pending-authorization"]:
            run.errors[f"purchase not waiting: {[(c.state, c.result) for c in calls]}"] += 1

    await with_concurrency(args.pending, args.concurrency, buy)
    seconds = time.monotonic() - started
    if run.errors:
        log(f"   errors callers saw so far: {dict(run.errors)}")

    async def asleep() -> bool:
        return await run.live_buyers() <= BUYER_SHARE_LIVE_ASLEEP * args.pending

    if getattr(args, "no_probes", False):  # each safety-net check wakes its thread: they never all sleep at once
        await asyncio.sleep(args.idle * 2)
    else:
        await wait_until(asleep, timeout=args.idle * 4 + 300, what="the buyers to fall asleep", interval=1.0)
    run.results["purchases"] = {
        "started": args.pending,
        "seconds": round(seconds, 1),
        "per_s": round(args.pending / seconds, 1),
        "asleep_after_s": round(time.monotonic() - started - seconds, 1),
        **await run.counts(),
    }


# -- what waiting costs ------------------------------------------------------------------------------------


async def cost_over(window: float) -> dict[str, float]:
    """The whole node's CPU (share of one core) over `window` s, and its memory at the end."""
    busy, by_role, started = busy_seconds(), cpu_seconds_by_role(), time.monotonic()
    await asyncio.sleep(window)
    took = time.monotonic() - started
    cpu = (busy_seconds() - busy) / took
    after = cpu_seconds_by_role()
    roles = {role: round(100 * (after[role] - by_role.get(role, 0.0)) / took, 2) for role in after}
    return {
        "node_cpu_pct_of_one_core": round(100 * cpu, 2),
        "cpu_pct_of_one_core_by_role": dict(sorted(roles.items(), key=lambda item: -item[1])),
        "node_mib": round(node_used_mib(), 1),
        "resident_mib_by_role": resident_mib_by_role(),
    }


async def waiting_cost(run: WaitingRun) -> None:
    """3. While every purchase waits (its thread asleep): what the node spends, against the empty stack."""
    args = run.args
    log(f"3/5 measuring what {args.pending:,} waiting purchases cost over {args.window:.0f} s ...")
    stats_before, scheduler_before = await run.hosts.stats(), await run.scheduler_stats()
    cost = await cost_over(args.window)
    scheduler_after = await run.scheduler_stats()
    empty, asleep = run.results["empty_stack"], run.results["threads_asleep"]
    run.results["waiting"] = {
        **cost,
        "window_s": args.window,
        "safety_net_probes": scheduler_after["probed"] - scheduler_before["probed"],
        "scheduler_wakeups": scheduler_after["woken"] - scheduler_before["woken"],
        "live_buyers": await run.live_buyers(),
        "live_agents": sum(s["live"] for s in await run.hosts.stats()),
        "activations_during_window": sum(s["activations"] for s in await run.hosts.stats())
        - sum(s["activations"] for s in stats_before),
        "cpu_pct_over_empty_stack": round(cost["node_cpu_pct_of_one_core"] - empty["node_cpu_pct_of_one_core"], 2),
        "memory_vs_empty_stack": round(cost["node_mib"] / empty["node_mib"], 3),
        "cpu_pct_over_threads_asleep": round(cost["node_cpu_pct_of_one_core"] - asleep["node_cpu_pct_of_one_core"], 2),
        "memory_vs_threads_asleep": round(cost["node_mib"] / asleep["node_mib"], 3),
        "resident_growth_mib_by_role": growth_by_role(empty["resident_mib_by_role"], cost["resident_mib_by_role"]),
    }


def growth_by_role(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """How much each role's resident memory grew (MiB), largest first."""
    growth = {role: round(after.get(role, 0.0) - before.get(role, 0.0), 1) for role in {*before, *after}}
    return dict(sorted(growth.items(), key=lambda item: -item[1]))


# -- approvals ---------------------------------------------------------------------------------------------


async def pending_by_quantity(phone: httpx.AsyncClient) -> dict[int, str]:
    """The dev server's pending requests, by the purchase's quantity (thread i buys i + 1)."""
    pending = (await phone.get("/dev/ciba/requests", params={"status": "pending"})).json()
    return {int(r["binding_message"].split()[1]): r["id"] for r in pending if r.get("binding_message")}


async def single_approvals(run: WaitingRun, requests: dict[int, str]) -> None:
    """4. S purchases approved one at a time, each thread asleep: approval -> tool result."""
    from bench.waiting_agent import Waiter

    args = run.args
    log(f"4/5 {args.singles:,} approvals one at a time, each thread asleep ...")
    seconds, asleep = [], 0
    async with run.phone() as phone:
        for i in range(args.singles):
            live = await run.hosts.live_names()
            asleep += f"Waiter/{thread_id(i)}" not in live
            approved = time.time()
            await approve(phone, requests[i + 1])
            path = Waiter.storage_path(run.storage, thread_id(i))

            async def has_result(p: Path = path) -> float | None:
                return tool_result_at(p)

            seconds.append(await wait_until(has_result, timeout=120, what="a result", interval=0.002) - approved)
    run.results["single_approvals"] = {
        "approval_to_tool_result": summarise(seconds),
        "asleep_when_approved": asleep,
    }


async def approve_at_once(run: WaitingRun, requests: dict[int, str]) -> None:
    """5. B purchases approved at once while the host count goes 2 -> 4 -> 2 and a reader calls the
    threads over HTTP: all complete once, how long the backlog takes, what moved, what callers saw."""
    from bench.scale_waiting import host_change
    from bench.waiting_agent import Waiter

    args = run.args
    first, last = args.singles, args.singles + args.burst
    log(f"5/5 approving {args.burst:,} purchases at once while the hosts go 2 -> 4 -> 2 ...")
    before = await run.counts()
    buyers = [f"Waiter/{thread_id(i)}" for i in range(args.pending)]
    stop_reading = asyncio.Event()
    reader = asyncio.ensure_future(read_over_http(run, stop_reading))
    moving = asyncio.ensure_future(host_change(run, buyers))
    started = time.time()
    async with run.phone() as phone:
        await with_concurrency(last - first, APPROVING_PHONES, lambda k: approve(phone, requests[first + k + 1]))
    approved_in = time.time() - started

    async def all_placed() -> bool:
        return (await run.counts())["orders"] - before["orders"] >= args.burst

    await wait_until(all_placed, timeout=300, what="every approved purchase to be placed", interval=0.5)
    moved = await moving
    stop_reading.set()
    reads = await reader
    finished = [tool_result_at(Waiter.storage_path(run.storage, thread_id(i))) for i in range(first, last)]
    await asyncio.sleep(2)  # late duplicates, if any, would show up in the counts below
    after = await run.counts()
    run.results["burst"] = {
        "approved": args.burst,
        "approving_took_s": round(approved_in, 1),
        "drained_in_s": round(max(t for t in finished if t) - started, 1) if any(finished) else None,
        "results_written": sum(1 for t in finished if t),
        "orders": after["orders"] - before["orders"],
        "ciba_requests_during": after["ciba_requests"] - before["ciba_requests"],
        "host_change": moved,
        "http_reads": reads,
    }


async def read_over_http(run: WaitingRun, stop: asyncio.Event) -> dict[str, Any]:
    """A user reading random waiting threads over HTTP until `stop`: statuses by code (5xx: target 0) and
    how long the reads took (a read may wake a sleeping thread, or wait for a moving one)."""
    statuses: Counter[str] = Counter()
    seconds: list[float] = []
    async with httpx.AsyncClient(base_url=run.stack.urls.api, timeout=60) as http:
        while not stop.is_set():
            i = random.randrange(run.args.pending)
            try:
                headers = {"Authorization": f"Bearer {run.token_of(i)}"}
                started = time.perf_counter()
                response = await http.get(f"/threads/{thread_id(i)}/messages", headers=headers)
                seconds.append(time.perf_counter() - started)
                statuses[str(response.status_code)] += 1
                if response.status_code >= 500:
                    run.errors[f"HTTP {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                run.errors[f"HTTP {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)
    return {"statuses": dict(statuses), "latency": summarise(seconds)}
