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

Prints a table and writes `bench/results/chat_bench.json`.

    python bench/chat_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/chat_bench.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import ray  # noqa: E402

from bench.common import (  # noqa: E402
    StackWorld,
    final_message_at,
    local_stack,
    log,
    machine_info,
    new_thread_with_message,
    scan_logs,
    summarise,
    wait_until,
)

NAMESPACE = "chat-bench"
PRICE_QUESTION = "What is MSFT trading at?"


@ray.remote(num_cpus=0)
class Bare:
    """The floor: a bare Ray async actor."""

    async def noop(self) -> None:
        return None


# -- helpers -----------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def slope_ms(points: list[tuple[int, float]]) -> float | None:
    """Least-squares milliseconds per unit of x, for (x, seconds) points."""
    if len({x for x, _ in points}) < 2:
        return None
    return round(statistics.linear_regression([x for x, _ in points], [t for _, t in points]).slope * 1000, 3)


def final_text(messages: list[Any]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "assistant" and m.content), "")


# -- 1. turn latency ---------------------------------------------------------------------------------------


class BareModel:
    """The agent's model requests, made directly: one `AsyncOpenAI` client, streamed, chunks consumed.

    Keeps `threads` conversations of its own, round-robin like the chat turns, so that each request carries
    as much history as the agent's request at the same point of the run (the model's cost grows with it).
    """

    def __init__(self, base_url: str, threads: int) -> None:
        from openai import AsyncOpenAI

        from agents.settings import ChatSettings
        from tools.stocks import get_stock_price, make_buy_stock_tool

        settings = ChatSettings()
        self.model = settings.openai_model
        self.client = AsyncOpenAI(base_url=base_url, api_key="offline", max_retries=0)
        self.tools = [get_stock_price.openai_schema(), make_buy_stock_tool().openai_schema()]
        self.system = {"role": "system", "content": settings.system_prompt}
        self.histories: list[list[dict[str, Any]]] = [[] for _ in range(threads)]
        self.next_pair = 0  # the conversation the next pair (a whole turn) goes to
        self.next_one = 0  # the conversation whose first request the next single call repeats

    def first_request(self, index: int) -> list[dict[str, Any]]:
        return [self.system, *self.histories[index], {"role": "user", "content": PRICE_QUESTION}]

    async def complete(self, messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
        """One streamed completion, consumed the way the agent does; returns (text, tool calls)."""
        stream = await self.client.chat.completions.create(
            model=self.model, messages=messages, tools=self.tools, stream=True
        )
        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if delta.content:
                parts.append(delta.content)
            for tool_delta in delta.tool_calls or []:
                entry = calls.setdefault(tool_delta.index, {"id": "", "name": "", "arguments": ""})
                if tool_delta.id:
                    entry["id"] = tool_delta.id
                if tool_delta.function is not None:
                    entry["name"] = tool_delta.function.name or entry["name"]
                    entry["arguments"] += tool_delta.function.arguments or ""
        return "".join(parts), [calls[i] for i in sorted(calls)]

    async def call_one(self) -> None:
        """The first request of a price turn (it answers with the tool call)."""
        index = self.next_one % len(self.histories)
        self.next_one += 1
        _, calls = await self.complete(self.first_request(index))
        if not calls:
            raise RuntimeError("the bare model call made no tool call")

    async def call_pair(self) -> None:
        """Both requests of a price turn: the tool call, then the answer given its result; kept as history."""
        index = self.next_pair % len(self.histories)
        self.next_pair += 1
        first = self.first_request(index)
        _, calls = await self.complete(first)
        exchange = [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ],
            },
            *({"role": "tool", "tool_call_id": c["id"], "content": "MSFT is trading at 25.0 USD"} for c in calls),
        ]
        text, more = await self.complete([*first, *exchange])
        if more or "25.0" not in text:
            raise RuntimeError(f"unexpected second answer from the bare model: {text!r} {more!r}")
        self.histories[index].extend([first[-1], *exchange, {"role": "assistant", "content": text}])


async def bench_turns(world: Any, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    from agents.chat import Chat
    from runtime import get_agent

    token = world.token("alice")
    threads = [get_agent(Chat, f"turn-{i:02d}", storage_dir=root, namespace=NAMESPACE) for i in range(cfg["threads"])]
    bare_actor = Bare.remote()  # type: ignore[attr-defined]
    model = BareModel(world.model.base_url, len(threads))
    next_thread = 0
    history = [0] * len(threads)  # turns each thread has had
    by_history: list[tuple[int, float]] = []  # (earlier turns in the thread, seconds) of the measured turns
    bad_answers: list[str] = []

    async def one_turn() -> None:
        nonlocal next_thread
        index = next_thread % len(threads)
        next_thread += 1
        t0 = time.perf_counter()
        new = await threads[index].send_message(token, PRICE_QUESTION)
        by_history.append((history[index], time.perf_counter() - t0))
        history[index] += 1
        if "25.0" not in final_text(new):
            bad_answers.append(final_text(new))

    started = time.perf_counter()
    await asyncio.gather(*(t.get_messages(token) for t in threads))  # creates the actors (and claims the threads)
    creation_s = time.perf_counter() - started
    first_turns = []
    for _ in threads:  # the first turn in a thread, one at a time: the cold path (clients, first requests)
        t0 = time.perf_counter()
        await one_turn()
        first_turns.append(time.perf_counter() - t0)
        await model.call_pair()  # the bare conversations keep step with the threads' histories
    pair_by_history: list[tuple[int, float]] = []

    async def model_pair() -> None:
        earlier = len(model.histories[model.next_pair % len(threads)]) // 4  # 4 messages per price turn
        t0 = time.perf_counter()
        await model.call_pair()
        pair_by_history.append((earlier, time.perf_counter() - t0))

    variants = {
        "turn": one_turn,
        "model_call": model.call_one,
        "model_pair": model_pair,
        "actor": lambda: bare_actor.noop.remote(),
    }
    for _ in range(cfg["warmup"]):
        for call in variants.values():
            await call()
    by_history.clear()
    pair_by_history.clear()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, cfg["turns"] // cfg["rounds"])
    for _ in range(cfg["rounds"]):  # alternate, so that drift hits every variant alike
        for name, call in variants.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                await call()
                samples[name].append(time.perf_counter() - t0)
    ray.kill(bare_actor)
    results: dict[str, Any] = {name: summarise(values) for name, values in samples.items()}
    turn, one, pair, actor = (results[k] for k in ("turn", "model_call", "model_pair", "actor"))
    for stat in ("p50_ms", "mean_ms"):
        key = stat.removesuffix("_ms")
        turn[f"{key}_vs_model_call"] = ratio(turn[stat], one[stat])
        turn[f"{key}_vs_2x_model_call"] = ratio(turn[stat], 2 * one[stat])
        turn[f"{key}_vs_model_pair"] = ratio(turn[stat], pair[stat])
        turn[f"{key}_vs_actor"] = ratio(turn[stat], actor[stat])
        one[f"{key}_vs_actor"] = ratio(one[stat], actor[stat])
    turn["overhead_vs_model_pair_p50_ms"] = round(turn["p50_ms"] - pair["p50_ms"], 3)
    results["first_turn"] = summarise(first_turns)
    results["first_turn"]["p50_vs_turn"] = ratio(results["first_turn"]["p50_ms"], turn["p50_ms"])
    split = statistics.median_low(h for h, _ in by_history)
    results["turn_by_history"] = {
        f"up_to_{split}_earlier_turns": summarise([t for h, t in by_history if h <= split]),
        f"over_{split}_earlier_turns": summarise([t for h, t in by_history if h > split]),
    }
    results["turn_ms_per_earlier_turn"] = slope_ms(by_history)
    results["model_pair_ms_per_earlier_turn"] = slope_ms(pair_by_history)
    results["threads"] = len(threads)
    results["turns_per_thread"] = max(history)
    results["thread_actor_creation_s"] = round(creation_s, 3)
    results["bad_answers"] = bad_answers[:5]
    return results


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


async def purchase(agent: Any, token: str, quantity: int, phone: Phone, rng: random.Random, cfg: dict) -> dict:
    """One purchase in its own thread, approved at a random moment; times the way to the final answer."""
    message, binding, needle = (
        f"Buy {quantity} shares of MSFT",
        f"Buy {quantity} MSFT",
        f"Purchased {quantity} shares of MSFT",
    )
    snapshot = await agent.poll_events(token, 0, None, 0)
    epoch, after = snapshot["epoch"], snapshot["last_seq"]
    sent = time.time()
    new = await agent.send_message(token, message)
    turn_s = time.time() - sent
    states = [m.state for m in new if m.role == "tool"]
    if states != ["pending-authorization"]:
        raise RuntimeError(f"{message!r}: tool states {states}, expected one pending-authorization")

    seen: dict[str, float] = {}  # event type -> (agent clock) `at`, first time seen after the approval

    async def watch() -> float:
        nonlocal epoch, after
        deadline = time.monotonic() + cfg["purchase_timeout"]
        while time.monotonic() < deadline:
            got = await agent.poll_events(token, after, epoch, min(10.0, cfg["purchase_timeout"]))
            if got["epoch"] != epoch:  # the actor restarted: the events start again from 0
                seen["epoch_change"] = time.time()
                epoch = got["epoch"]
            after = got["last_seq"]
            for event in got["events"]:
                if event.type == "tool_result" and "tool_result" not in seen:
                    seen["tool_result"] = event.at
                if event.type == "message":
                    data = event.data.get("message") or {}
                    if data.get("role") == "assistant" and needle in (data.get("content") or ""):
                        seen["message"] = event.at
                        return time.time()
        raise TimeoutError(f"{message!r}: no final message after {cfg['purchase_timeout']}s")

    watcher = asyncio.create_task(watch())
    request, first_seen = await phone.wait_for(binding, timeout=20)
    approve_at = float(request["created_at"]) + rng.uniform(0.0, cfg["approve_within"])
    await asyncio.sleep(max(0.0, approve_at - time.time()))
    decided = await phone.approve(request["id"])
    approved = float(decided["decided_at"] or time.time())
    observed = await watcher
    messages = await agent.get_messages(token)
    if needle not in final_text(messages):
        raise RuntimeError(f"{message!r}: get_messages has no final {needle!r}: {final_text(messages)!r}")
    waited = approved - float(request["created_at"])
    next_slot = math.floor(waited / cfg["ciba_interval"] + 1) * cfg["ciba_interval"]  # polls: created + k*interval
    return {
        "quantity": quantity,
        "request_id": request["id"],
        "turn_s": turn_s,
        "request_seen_after_created_s": first_seen - float(request["created_at"]),
        "approved_after_created_s": approved - float(request["created_at"]),
        "approval_to_tool_result_s": seen["tool_result"] - approved,
        "tool_result_after_poll_slot_s": seen["tool_result"] - (float(request["created_at"]) + next_slot),
        "approval_to_message_s": seen["message"] - approved,
        "approval_to_observed_s": observed - approved,
        "epoch_changed": "epoch_change" in seen,
    }


async def bench_approvals(world: Any, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    from agents.chat import Chat
    from runtime import get_agent

    token = world.token("alice")
    rng = random.Random(cfg["seed"])
    n, batch = cfg["purchases"], cfg["batch"]
    started = time.perf_counter()
    agents = [get_agent(Chat, f"buy-{i:02d}", storage_dir=root, namespace=NAMESPACE) for i in range(n)]
    await asyncio.gather(*(a.get_messages(token) for a in agents))  # all actors up before anything is timed
    creation_s = time.perf_counter() - started
    # One price question per thread first, so that the purchases do not pay (and load the CPUs with) the cold
    # first turn of every thread; the cold path is measured in phase 1.
    await asyncio.gather(*(a.send_message(token, PRICE_QUESTION) for a in agents))
    orders_before = world.orders()

    phone = Phone(world.authz.url)
    watcher = asyncio.create_task(phone.watch("alice", cfg["phone_interval"]))
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    batch_walls: list[float] = []
    try:
        for first in range(0, n, batch):
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(
                *(purchase(agents[i], token, i + 1, phone, rng, cfg) for i in range(first, min(n, first + batch))),
                return_exceptions=True,
            )
            batch_walls.append(round(time.perf_counter() - t0, 3))
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    errors.append(f"{type(outcome).__name__}: {outcome}")
                else:
                    records.append(outcome)
    finally:
        watcher.cancel()
        try:
            await watcher
        except (asyncio.CancelledError, Exception):
            pass
        final_requests = {r["id"]: r for r in await phone.all_requests("alice")}
        await phone.http.aclose()

    stats = world.stats()
    workers = ray_worker_processes()
    polls = [stats["polls_by_request"].get(r["request_id"], 0) for r in records]
    # The polls the interval allows: one per interval from the request until approved, plus the one that gets it.
    allowed = [int(r["approved_after_created_s"] // cfg["ciba_interval"]) + 2 for r in records]
    intervals = Counter(int(final_requests[r["request_id"]]["interval"]) for r in records)
    return {
        "purchases": n,
        "batch": batch,
        "completed": len(records),
        "errors": errors[:10],
        "agent_creation_s": round(creation_s, 3),
        "batch_wall_s": batch_walls,
        "orders_placed": world.orders() - orders_before,
        "send_message_to_pending": summarise([r["turn_s"] for r in records]),
        "request_seen_after_created": summarise([r["request_seen_after_created_s"] for r in records]),
        "approved_after_created": summarise([r["approved_after_created_s"] for r in records]),
        "approval_to_tool_result": summarise([r["approval_to_tool_result_s"] for r in records]),
        "tool_result_after_poll_slot": summarise([r["tool_result_after_poll_slot_s"] for r in records]),
        "approval_to_message": summarise([r["approval_to_message_s"] for r in records]),
        "approval_to_observed": summarise([r["approval_to_observed_s"] for r in records]),
        "polls_per_request": {
            "mean": round(statistics.fmean(polls), 2) if polls else None,
            "min": min(polls, default=None),
            "max": max(polls, default=None),
            "distribution": dict(sorted(Counter(polls).items())),
            "over_interval_allowance": sum(1 for p, a in zip(polls, allowed, strict=True) if p > a),
        },
        "final_intervals_s": dict(intervals),
        "epoch_changes": sum(1 for r in records if r["epoch_changed"]),
        "ray_worker_processes": workers,
        "records": records,
    }


# -- 3. approval latency by delivery mode ------------------------------------------------------------------

DELIVERIES = (("poll", 1), ("poll", 5), ("ping", 5))


async def measure_delivery(stack: Any, storage: Path, mode: str, interval: int, approvals: int) -> dict[str, Any]:
    """`approvals` purchases one after another over HTTP, each in a new thread, each approved at a random
    moment of an interval; approval -> the thread's final answer, read from the thread's own file (its
    `created_at`), so measuring wakes nothing."""
    from agentrt.client import dev_login
    from agents.chat import Chat

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
        "polls_per_approval": {"mean": round(statistics.fmean(polls), 2), "max": max(polls)},
    }


def bench_deliveries(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole stack (Serve ingress, dev servers, offline model) once per delivery mode, threads kept
    live (a long idle time) so that the figures are the approval path itself; `bench/scale_bench.py`
    measures it for sleeping threads."""
    rows = []
    for mode, interval in DELIVERIES:
        storage = Path(tempfile.mkdtemp(prefix=f"chat-bench-{mode}-"))
        extra = {"CIBA_DELIVERY_MODE": mode, "AGENT_IDLE_SECONDS": "600", "CIBA_PING_FALLBACK_SECONDS": "30"}
        stack = local_stack(storage, f"chat-bench-{mode}-{interval}", interval, extra)
        log(f"   {mode} mode, interval {interval} s: starting the stack ...")
        stack.start()
        try:
            rows.append(asyncio.run(measure_delivery(stack, storage, mode, interval, cfg["approvals_per_mode"])))
        finally:
            stack.stop()
            shutil.rmtree(storage, ignore_errors=True)
    return rows


def ray_worker_processes() -> dict[str, Any]:
    """This cluster's Ray worker processes (children of its raylet, `ray::...`) and their resident memory."""
    try:
        raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid  # type: ignore[attr-defined]
    except Exception:
        return {"count": None, "rss_mb": None}
    count, rss_kb = 0, 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            status = (proc / "status").read_text()
            if f"\nPPid:\t{raylet}\n" not in status or not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
        except OSError:
            continue
        count += 1
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        rss_kb += int(found.group(1)) if found else 0
    return {"count": count, "rss_mb": round(rss_kb / 1024, 1)}


# -- logs --------------------------------------------------------------------------------------------------


# -- report ------------------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    r = report["results"]
    m = report["machine"]
    table = Table(
        title=f"ray-agent-runtime chat benchmark ({m['cpu_count']} CPUs, Python {m['python']}, Ray {m['ray_version']}"
        f"{', quick' if report['config']['quick'] else ''})"
    )
    for column in ("measurement", "n", "p50 ms", "p99 ms", "mean ms", "max ms", "notes"):
        table.add_column(column, justify="left" if column in ("measurement", "notes") else "right")

    def row(name: str, s: dict[str, Any], notes: str = "") -> None:
        table.add_row(
            name,
            str(s.get("n", "")),
            f"{s['p50_ms']:.3f}" if "p50_ms" in s else "",
            f"{s['p99_ms']:.3f}" if "p99_ms" in s else "",
            f"{s['mean_ms']:.3f}" if "mean_ms" in s else "",
            f"{s['max_ms']:.3f}" if "max_ms" in s else "",
            notes,
        )

    t = r["turns"]
    turn = t["turn"]
    row("bare Ray async actor round trip", t["actor"], "floor of any agent call")
    row("bare model call (1st request), streamed", t["model_call"], f"{t['model_call']['p50_vs_actor']}x actor p50")
    row(
        "bare model pair (both requests)",
        t["model_pair"],
        f"tool call, then answer; history as the turns' (up to {t['turns_per_thread']} turns per thread)",
    )
    row(
        "chat turn: 1st in a new thread (cold)",
        t["first_turn"],
        f"one at a time, after the actor is up; {t['first_turn']['p50_vs_turn']}x warm p50",
    )
    row(
        "chat turn: send_message (price question)",
        turn,
        f"{t['threads']} threads; p50 {turn['p50_vs_model_call']}x 1 call, {turn['p50_vs_2x_model_call']}x 2 calls, "
        f"{turn['p50_vs_model_pair']}x pair, {turn['p50_vs_actor']}x actor",
    )
    table.add_row(
        "  turn - pair (p50)",
        "",
        f"{turn['overhead_vs_model_pair_p50_ms']:.3f}",
        *[""] * 3,
        f"mean {turn['mean_vs_2x_model_call']}x 2 calls, {turn['mean_vs_model_pair']}x pair",
    )
    for name, stat in t["turn_by_history"].items():
        row(
            f"  turn, {name.replace('_', ' ')}",
            stat,
            f"{t['turn_ms_per_earlier_turn']} ms per earlier turn (bare pair: {t['model_pair_ms_per_earlier_turn']})",
        )
    table.add_section()
    a = r["approvals"]
    pp = a["polls_per_request"]
    row(
        "purchase turn: send_message to pending",
        a["send_message_to_pending"],
        f"{a['batch']} at once (batch walls {a['batch_wall_s']} s); "
        f"{a['ray_worker_processes']['count']} Ray worker processes, {a['ray_worker_processes']['rss_mb']} MB RSS",
    )
    row(
        "approval moment after request created",
        a["approved_after_created"],
        f"random 0-{report['config']['approve_within']} s",
    )
    row(
        "approval -> tool_result event (agent clock)",
        a["approval_to_tool_result"],
        f"CIBA interval {report['config']['ciba_interval']} s, poll mode",
    )
    row(
        "  tool_result - next poll slot (approx.)",
        a["tool_result_after_poll_slot"],
        "slot = created + k x interval; the rest is schedule lateness, token, checkout, store",
    )
    row("approval -> final message event (agent clock)", a["approval_to_message"], "+ the answer's model call")
    row(
        "approval -> final message seen (poll_events)",
        a["approval_to_observed"],
        f"completed {a['completed']}/{a['purchases']}, orders {a['orders_placed']}, errors {len(a['errors'])}",
    )
    table.add_row(
        "token polls per approved request",
        str(a["completed"]),
        *[""] * 4,
        f"mean {pp['mean']}, min {pp['min']}, max {pp['max']}, {pp['distribution']}; "
        f"{pp['over_interval_allowance']} over the interval's allowance; final intervals {a['final_intervals_s']}",
    )
    deliveries = r.get("deliveries") or []
    if deliveries:
        table.add_section()
        ping = next((d for d in deliveries if d["mode"] == "ping"), None)
        for d in deliveries:
            s = d["approval_to_final_message"]
            versus = f", p50 {s['p50_ms'] / ping['approval_to_final_message']['p50_ms']:.1f}x ping" if ping else ""
            row(
                f"approval -> final message, {d['mode']} (interval {d['interval_s']} s)",
                s,
                f"over HTTP, one at a time; polls/approval {d['polls_per_approval']['mean']} "
                f"(max {d['polls_per_approval']['max']}){versus}",
            )
    console = Console(width=220)
    console.print(table)
    for error in a["errors"]:
        console.print(f"  purchase error: {error}", markup=False, highlight=False)
    logs = report.get("logs", {})
    if logs.get("scanned"):
        console.print(f"flagged log lines: {logs['counts'] or 'none'} (benign, not shown: {logs['benign_counts']})")
        for sample in logs["samples"][:8]:
            console.print(f"  {sample['count']:>4} x {sample['line']}", markup=False, highlight=False)


# -- main --------------------------------------------------------------------------------------------------


async def run(world: Any, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    phases: dict[str, float] = {}

    started = time.perf_counter()
    log(f"1/3 turn latency ({cfg['turns']} turns over {cfg['threads']} threads, vs bare model and actor) ...")
    results["turns"] = await bench_turns(world, root, cfg)
    phases["turns_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    log(
        f"2/3 approval latency ({cfg['purchases']} purchases, batches of {cfg['batch']}, "
        f"CIBA interval {cfg['ciba_interval']} s) ..."
    )
    results["approvals"] = await bench_approvals(world, root, cfg)
    phases["approvals_s"] = round(time.perf_counter() - started, 2)
    results["phases"] = phases
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chat_bench.json")
    args = parser.parse_args()
    if args.quick:
        cfg: dict[str, Any] = {"turns": 20, "threads": 4, "warmup": 3, "rounds": 2, "purchases": 4, "batch": 4}
        cfg["approvals_per_mode"] = 4
    else:
        cfg = {"turns": 100, "threads": 10, "warmup": 10, "rounds": 4, "purchases": 20, "batch": 10}
        cfg["approvals_per_mode"] = 20
    cfg.update(
        ciba_interval=1, approve_within=2.0, phone_interval=0.02, purchase_timeout=30.0, seed=20240601, quick=args.quick
    )

    root = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    log(f"starting the dev services and a local Ray cluster (storage root {root}) ...")
    wall = time.perf_counter()
    session_dir: str | None = None
    env = {"CIBA_DELIVERY_MODE": "poll", "AGENT_IDLE_SECONDS": "600"}
    stack = local_stack(root, NAMESPACE, cfg["ciba_interval"], env)
    try:
        stack.start()  # Ray with the services' settings in its runtime_env, the dev services, the Serve app
        world = StackWorld(stack)
        try:
            session_dir = ray._private.worker._global_node.get_session_dir_path()  # type: ignore[attr-defined]
        except Exception:
            session_dir = None
        results = asyncio.run(run(world, root, cfg))
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    log(f"3/3 approval -> final message by delivery ({cfg['approvals_per_mode']} per mode, over HTTP) ...")
    results["deliveries"] = bench_deliveries(cfg)
    report = {
        "benchmark": "chat_bench",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {**cfg, "storage_root": str(root), "namespace": NAMESPACE},
        "results": results,
        "wall_s": round(time.perf_counter() - wall, 2),
        "logs": scan_logs(session_dir),
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out} (wall {report['wall_s']}s)")
    return 0


if __name__ == "__main__":
    # Run the copy imported as `bench.chat_bench`, not `__main__`: Ray pickles the `Bare` actor class by
    # reference, and workers import it by that name.
    from bench.chat_bench import main as module_main

    sys.exit(module_main())
