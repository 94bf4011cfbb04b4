"""Chat benchmark, phases 2 and 3: approval latency of CIBA purchases (see `bench/chat_bench.py`, which
runs them).

2. In poll mode at interval 1 s: purchases, each in its own warmed-up thread, run concurrently in batches;
   the "phone" approves each at a random moment after its request appears, and a long-poll watcher per
   thread notes when the tool result and the final answer arrive.
3. By delivery mode: the whole stack once per mode, purchases over HTTP one at a time, the answer's time
   read from the thread's file.

Apart from the script so that each file stays readable on its own.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray

from bench.chat_turns import NAMESPACE, PRICE_QUESTION, final_text
from bench.common import (
    answered_at,
    approve,
    local_stack,
    log,
    new_thread_with_message,
    pending_requests,
    ray_worker_pids,
    rss_mib,
    running,
    summarise,
    wait_until,
)

DELIVERIES = (("poll", 1), ("poll", 5), ("ping", 5))


# -- 2. approval latency -----------------------------------------------------------------------------------


class Phone:
    """The user's phone, asynchronously: the dev server's `/dev/ciba/requests` API (see `bench.common.StackWorld`)."""

    def __init__(self, authz_url: str) -> None:
        self.url = authz_url.rstrip("/")
        self.http = httpx.AsyncClient(timeout=10)
        self.seen: dict[str, tuple[dict[str, Any], float]] = {}  # binding message -> (request, first seen)
        self.sightings = asyncio.Event()

    async def watch(self, user: str, interval: float) -> None:
        """List the user's pending requests every `interval` s, noting when each binding message appears."""
        while True:
            response = await self.http.get(f"{self.url}/dev/ciba/requests", params={"user": user, "status": "pending"})
            response.raise_for_status()
            now = time.time()
            for request in response.json():
                if request["binding_message"] not in self.seen:
                    self.seen[request["binding_message"]] = (request, now)
                    self.sightings.set()
            await asyncio.sleep(interval)

    async def wait_for(self, binding_message: str, timeout: float) -> tuple[dict[str, Any], float]:
        deadline = time.monotonic() + timeout
        while binding_message not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CIBA request {binding_message!r} after {timeout}s")
            self.sightings.clear()
            try:
                await asyncio.wait_for(self.sightings.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                pass
        return self.seen[binding_message]

    async def approve(self, request_id: str) -> dict[str, Any]:
        response = await self.http.post(f"{self.url}/dev/ciba/requests/{request_id}/approve")
        response.raise_for_status()
        return response.json()

    async def all_requests(self, user: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.url}/dev/ciba/requests", params={"user": user})
        response.raise_for_status()
        return response.json()


class AnswerWatcher:
    """Long-polls a thread's events from where they stood before the purchase, noting (by the agent's event
    clock) the first `tool_result` and the final assistant message, which contains `needle`."""

    def __init__(self, agent: Any, token: str, snapshot: dict[str, Any], needle: str, timeout: float) -> None:
        self.agent = agent
        self.token = token
        self.epoch, self.after = snapshot["epoch"], snapshot["last_seq"]
        self.needle = needle
        self.timeout = timeout
        self.seen: dict[str, float] = {}  # event type -> (agent clock) `at`, first time seen after the approval

    async def until_answered(self, label: str) -> float:
        """When (driver clock) the final message arrived."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            got = await self.agent.poll_events(self.token, self.after, self.epoch, min(10.0, self.timeout))
            if got["epoch"] != self.epoch:  # the actor restarted: the events start again from 0
                self.seen["epoch_change"] = time.time()
                self.epoch = got["epoch"]
            self.after = got["last_seq"]
            if self.note(got["events"]):
                return time.time()
        raise TimeoutError(f"{label!r}: no final message after {self.timeout}s")

    def note(self, events: list[Any]) -> bool:
        """Note the events' times; True once the final message is among them."""
        for event in events:
            if event.type == "tool_result" and "tool_result" not in self.seen:
                self.seen["tool_result"] = event.at
            if event.type == "message":
                data = event.data.get("message") or {}
                if data.get("role") == "assistant" and self.needle in (data.get("content") or ""):
                    self.seen["message"] = event.at
                    return True
        return False


async def send_purchase(agent: Any, token: str, message: str) -> float:
    """Send the purchase; the turn's seconds (it must end with the purchase pending the user's approval)."""
    sent = time.time()
    new = await agent.send_message(token, message)
    turn_s = time.time() - sent
    states = [m.state for m in new if m.role == "tool"]
    if states != ["pending-authorization"]:
        raise RuntimeError(f"{message!r}: tool states {states}, expected one pending-authorization")
    return turn_s


async def approve_at_random(phone: Phone, request: dict[str, Any], rng: random.Random, within: float) -> float:
    """Approve at a random moment 0-`within` s after the request was created; when the server says it was."""
    approve_at = float(request["created_at"]) + rng.uniform(0.0, within)
    await asyncio.sleep(max(0.0, approve_at - time.time()))
    decided = await phone.approve(request["id"])
    return float(decided["decided_at"] or time.time())


def purchase_record(
    request: dict[str, Any], approved: float, observed: float, seen: dict[str, float], interval: int
) -> dict[str, Any]:
    """One purchase's times, from the request's creation and from its approval."""
    created = float(request["created_at"])
    waited = approved - created
    next_slot = math.floor(waited / interval + 1) * interval  # the polls are at created + k x interval
    return {
        "approved_after_created_s": approved - created,
        "approval_to_tool_result_s": seen["tool_result"] - approved,
        "tool_result_after_poll_slot_s": seen["tool_result"] - (created + next_slot),
        "approval_to_message_s": seen["message"] - approved,
        "approval_to_observed_s": observed - approved,
        "epoch_changed": "epoch_change" in seen,
    }


async def purchase(
    agent: Any, token: str, quantity: int, phone: Phone, rng: random.Random, cfg: dict[str, Any]
) -> dict[str, Any]:
    """One purchase in its own thread, approved at a random moment; times the way to the final answer."""
    message, binding = f"Buy {quantity} shares of MSFT", f"Buy {quantity} MSFT"
    needle = f"Purchased {quantity} shares of MSFT"
    snapshot = await agent.poll_events(token, 0, None, 0)
    turn_s = await send_purchase(agent, token, message)
    answer = AnswerWatcher(agent, token, snapshot, needle, cfg["purchase_timeout"])
    watcher = asyncio.create_task(answer.until_answered(message))
    request, first_seen = await phone.wait_for(binding, timeout=20)
    approved = await approve_at_random(phone, request, rng, cfg["approve_within"])
    observed = await watcher
    messages = await agent.get_messages(token)
    if needle not in final_text(messages):
        raise RuntimeError(f"{message!r}: get_messages has no final {needle!r}: {final_text(messages)!r}")
    return {
        "quantity": quantity,
        "request_id": request["id"],
        "turn_s": turn_s,
        "request_seen_after_created_s": first_seen - float(request["created_at"]),
        **purchase_record(request, approved, observed, answer.seen, cfg["ciba_interval"]),
    }


@dataclass
class Batches:
    """What the batches of purchases came to: each completed purchase's record, the failures, the walls."""

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)


async def open_buyers(root: Path, token: str, n: int) -> tuple[list[Any], float]:
    """`n` threads, all actors up before anything is timed (seconds that took), each warmed by one price
    question, so that the purchases do not pay (and load the CPUs with) the cold first turn of every
    thread; the cold path is measured in phase 1."""
    from agents.chat import Chat
    from runtime import get_agent

    started = time.perf_counter()
    agents = [get_agent(Chat, f"buy-{i:02d}", storage_dir=root, namespace=NAMESPACE) for i in range(n)]
    await asyncio.gather(*(a.get_messages(token) for a in agents))
    creation_s = time.perf_counter() - started
    await asyncio.gather(*(a.send_message(token, PRICE_QUESTION) for a in agents))
    return agents, creation_s


async def purchase_in_batches(
    agents: list[Any], token: str, phone: Phone, rng: random.Random, cfg: dict[str, Any]
) -> Batches:
    """The purchases, `cfg["batch"]` at once; a failed one is noted, not fatal."""
    n, batch = len(agents), cfg["batch"]
    done = Batches()
    for first in range(0, n, batch):
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(purchase(agents[i], token, i + 1, phone, rng, cfg) for i in range(first, min(n, first + batch))),
            return_exceptions=True,
        )
        done.walls.append(round(time.perf_counter() - started, 3))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                done.errors.append(f"{type(outcome).__name__}: {outcome}")
            else:
                done.records.append(outcome)
    return done


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait for it to end, whatever it ends with."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


def ray_worker_processes() -> dict[str, Any]:
    """This cluster's Ray worker processes (children of its raylet, `ray::...`) and their resident memory."""
    try:
        raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid  # type: ignore[attr-defined]
    except Exception:
        return {"count": None, "rss_mb": None}
    pids = ray_worker_pids(parent=raylet)
    return {"count": len(pids), "rss_mb": round(sum(rss_mib(pid) for pid in pids), 1)}


def poll_counts(records: list[dict[str, Any]], stats: dict[str, Any], interval: int) -> dict[str, Any]:
    """Token polls per approved request, and how many went over what the interval allows: one per
    interval from the request until approved, plus the one that gets the token."""
    polls = [stats["polls_by_request"].get(r["request_id"], 0) for r in records]
    allowed = [int(r["approved_after_created_s"] // interval) + 2 for r in records]
    return {
        "mean": round(statistics.fmean(polls), 2) if polls else None,
        "min": min(polls, default=None),
        "max": max(polls, default=None),
        "distribution": dict(sorted(Counter(polls).items())),
        "over_interval_allowance": sum(1 for p, a in zip(polls, allowed, strict=True) if p > a),
    }


def approval_results(
    world: Any, cfg: dict[str, Any], done: Batches, final_requests: dict[str, Any], creation_s: float, orders: int
) -> dict[str, Any]:
    """Phase 2's report: the purchases' timings summarised, the polls they took, the orders placed."""
    stats = world.stats()
    workers = ray_worker_processes()
    records = done.records
    intervals = Counter(int(final_requests[r["request_id"]]["interval"]) for r in records)
    summaries = {
        name: summarise([r[f"{name}_s"] for r in records])
        for name in (
            "request_seen_after_created",
            "approved_after_created",
            "approval_to_tool_result",
            "tool_result_after_poll_slot",
            "approval_to_message",
            "approval_to_observed",
        )
    }
    return {
        "purchases": cfg["purchases"],
        "batch": cfg["batch"],
        "completed": len(records),
        "errors": done.errors[:10],
        "agent_creation_s": round(creation_s, 3),
        "batch_wall_s": done.walls,
        "orders_placed": world.orders() - orders,
        "send_message_to_pending": summarise([r["turn_s"] for r in records]),
        **summaries,
        "polls_per_request": poll_counts(records, stats, cfg["ciba_interval"]),
        "final_intervals_s": dict(intervals),
        "epoch_changes": sum(1 for r in records if r["epoch_changed"]),
        "ray_worker_processes": workers,
        "records": records,
    }


async def bench_approvals(world: Any, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Phase 2: concurrent purchases in poll mode, each approved at a random moment by the phone."""
    token = world.token("alice")
    rng = random.Random(cfg["seed"])
    agents, creation_s = await open_buyers(root, token, cfg["purchases"])
    orders_before = world.orders()
    phone = Phone(world.authz.url)
    watcher = asyncio.create_task(phone.watch("alice", cfg["phone_interval"]))
    try:
        done = await purchase_in_batches(agents, token, phone, rng, cfg)
    finally:
        await stop_task(watcher)
        final_requests = {r["id"]: r for r in await phone.all_requests("alice")}
        await phone.http.aclose()
    return approval_results(world, cfg, done, final_requests, creation_s, orders_before)


# -- 3. approval latency by delivery mode ------------------------------------------------------------------


async def one_delivery(
    http: httpx.AsyncClient, phone: httpx.AsyncClient, storage: Path, thread_id: str, quantity: int, interval: int
) -> tuple[float, int]:
    """A purchase in a new thread over HTTP, approved at a random moment of an interval; (approval -> the
    thread's final answer, read from its own file so that measuring wakes nothing; polls the dev server
    counted for its request)."""
    from agents.chat import Chat

    await new_thread_with_message(http, thread_id, f"buy {quantity} shares of MSFT")

    async def pending() -> dict[str, Any] | None:
        rows = await pending_requests(phone, "alice")
        return next((r for r in rows if r["binding_message"] == f"Buy {quantity} MSFT"), None)

    request = await wait_until(pending, timeout=30, what="the request", interval=0.05)
    await asyncio.sleep(random.uniform(0, interval))  # the user answers at any moment of an interval
    approved = time.time()
    await approve(phone, request["id"])
    path = Chat.storage_path(storage, thread_id)
    answered = await wait_until(lambda: answered_at(path, approved), timeout=60, what="the answer", interval=0.005)
    stats = (await phone.get("/dev/stats")).json()
    return answered - approved, int(stats["polls_by_request"][request["id"]])


async def measure_delivery(stack: Any, storage: Path, mode: str, interval: int, approvals: int) -> dict[str, Any]:
    """`approvals` purchases one after another over HTTP, each in a new thread."""
    from agentrt.client import dev_login

    api, dev = stack.urls.api, stack.urls.authz
    token = await dev_login(api, "alice")
    latencies: list[float] = []
    polls: list[int] = []
    async with (
        httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=120.0) as http,
        httpx.AsyncClient(base_url=dev, timeout=60.0) as phone,
    ):
        await new_thread_with_message(http, "warm", PRICE_QUESTION)
        for i in range(approvals):
            latency, count = await one_delivery(http, phone, storage, f"{mode}-{interval}-{i:03d}", i + 1, interval)
            latencies.append(latency)
            polls.append(count)
    return {
        "mode": mode,
        "interval_s": interval,
        "approvals": approvals,
        "approval_to_final_message": summarise(latencies),
        "polls_per_approval": {"mean": round(statistics.fmean(polls), 2), "max": max(polls)},
    }


def bench_deliveries(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase 3: the whole stack (Serve ingress, dev servers, offline model) once per delivery mode, threads
    kept live (a long idle time) so that the figures are the approval path itself;
    `bench/scale_bench.py` measures it for sleeping threads."""
    rows = []
    for mode, interval in DELIVERIES:
        storage = Path(tempfile.mkdtemp(prefix=f"chat-bench-{mode}-"))
        extra = {"CIBA_DELIVERY_MODE": mode, "AGENT_IDLE_SECONDS": "600", "CIBA_PING_FALLBACK_SECONDS": "30"}
        stack = local_stack(storage, f"chat-bench-{mode}-{interval}", interval, extra)
        log(f"   {mode} mode, interval {interval} s: starting the stack ...")
        with running(stack, remove=storage):
            rows.append(asyncio.run(measure_delivery(stack, storage, mode, interval, cfg["approvals_per_mode"])))
    return rows
