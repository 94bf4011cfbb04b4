"""Chat benchmark, phase 1: turn latency (see `bench/chat_bench.py`, which runs it).

Sequential price turns round-robin over several `Chat` threads after warm-up, the first turn of each new
thread on its own (the cold path), and, in alternating rounds in the same run, the floors a turn is
compared with: the bare model call, the bare model pair (both requests of a turn) and a bare Ray actor
round trip. Apart from the script so that each file stays readable on its own.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import ray

from agents.model_stream import stream_completion
from bench.common import Bare, alternating_rounds, ratio, summarise

NAMESPACE = "chat-bench"
PRICE_QUESTION = "What is MSFT trading at?"


def slope_ms(points: list[tuple[int, float]]) -> float | None:
    """Least-squares milliseconds per unit of x, for (x, seconds) points."""
    if len({x for x, _ in points}) < 2:
        return None
    return round(statistics.linear_regression([x for x, _ in points], [t for _, t in points]).slope * 1000, 3)


def final_text(messages: list[Any]) -> str:
    """The thread's last assistant words: what the user reads as the answer."""
    return next((m.content for m in reversed(messages) if m.role == "assistant" and m.content), "")


class BareModel:
    """The agent's model requests, made directly: one `AsyncOpenAI` client, streamed, chunks consumed.

    Keeps `threads` conversations of its own, round-robin like the chat turns, so that each request carries
    as much history as the agent's request at the same point of the run (the model's cost grows with it).
    """

    def __init__(self, base_url: str, threads: int) -> None:
        from openai import AsyncOpenAI

        from agents.settings import ChatSettings
        from demo.stocks import get_stock_price, make_buy_stock_tool

        settings = ChatSettings()
        self.model = settings.openai_model
        self.client = AsyncOpenAI(base_url=base_url, api_key="offline", max_retries=0)
        self.tools = [get_stock_price.openai_schema(), make_buy_stock_tool().openai_schema()]
        self.system = {"role": "system", "content": settings.system_prompt}
        self.histories: list[list[dict[str, Any]]] = [[] for _ in range(threads)]
        self.next_pair = 0  # the conversation the next pair (a whole turn) goes to
        self.next_one = 0  # the conversation whose first request the next single call repeats
        self.pair_by_history: list[tuple[int, float]] = []  # (earlier turns, seconds) of the timed pairs

    def first_request(self, index: int) -> list[dict[str, Any]]:
        return [self.system, *self.histories[index], {"role": "user", "content": PRICE_QUESTION}]

    async def complete(self, messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
        """One streamed completion, consumed the way the agent does (the same function); returns (text,
        tool calls)."""
        request = {"model": self.model, "messages": messages, "tools": self.tools}
        return await stream_completion(self.client, request, lambda _text: None)

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

    async def timed_pair(self) -> None:
        """`call_pair`, noting its time with the turns its conversation had before (the history's cost)."""
        earlier = len(self.histories[self.next_pair % len(self.histories)]) // 4  # 4 messages per price turn
        started = time.perf_counter()
        await self.call_pair()
        self.pair_by_history.append((earlier, time.perf_counter() - started))


class Turns:
    """Price turns round-robin over the threads, each noted with the turns its thread had before (the
    history's cost); answers without the price are kept to show."""

    def __init__(self, threads: list[Any], token: str) -> None:
        self.threads = threads
        self.token = token
        self.next_thread = 0
        self.history = [0] * len(threads)  # turns each thread has had
        self.by_history: list[tuple[int, float]] = []  # (earlier turns in the thread, seconds)
        self.bad_answers: list[str] = []

    async def one(self) -> None:
        index = self.next_thread % len(self.threads)
        self.next_thread += 1
        started = time.perf_counter()
        new = await self.threads[index].send_message(self.token, PRICE_QUESTION)
        self.by_history.append((self.history[index], time.perf_counter() - started))
        self.history[index] += 1
        if "25.0" not in final_text(new):
            self.bad_answers.append(final_text(new))


async def open_threads(turns: Turns, model: BareModel) -> tuple[float, list[float]]:
    """Create the threads' actors (seconds it took), then time each thread's first turn on its own: the
    cold path (clients, first requests). The bare conversations keep step with the threads' histories."""
    started = time.perf_counter()
    await asyncio.gather(*(t.get_messages(turns.token) for t in turns.threads))  # creates (and claims) them
    creation_s = time.perf_counter() - started
    first_turns = []
    for _ in turns.threads:
        started = time.perf_counter()
        await turns.one()
        first_turns.append(time.perf_counter() - started)
        await model.call_pair()
    return creation_s, first_turns


def compare_with_floors(results: dict[str, Any]) -> None:
    """The turn's p50 and mean against one model call, two, the pair and the bare actor (in place)."""
    turn, one, pair, actor = (results[k] for k in ("turn", "model_call", "model_pair", "actor"))
    for stat in ("p50_ms", "mean_ms"):
        key = stat.removesuffix("_ms")
        turn[f"{key}_vs_model_call"] = ratio(turn[stat], one[stat])
        turn[f"{key}_vs_2x_model_call"] = ratio(turn[stat], 2 * one[stat])
        turn[f"{key}_vs_model_pair"] = ratio(turn[stat], pair[stat])
        turn[f"{key}_vs_actor"] = ratio(turn[stat], actor[stat])
        one[f"{key}_vs_actor"] = ratio(one[stat], actor[stat])
    turn["overhead_vs_model_pair_p50_ms"] = round(turn["p50_ms"] - pair["p50_ms"], 3)


def turn_results(
    samples: dict[str, list[float]], first_turns: list[float], turns: Turns, model: BareModel, creation_s: float
) -> dict[str, Any]:
    """The phase's report: each variant's summary and ratios, the cold first turn, the history's cost."""
    results: dict[str, Any] = {name: summarise(values) for name, values in samples.items()}
    compare_with_floors(results)
    results["first_turn"] = summarise(first_turns)
    results["first_turn"]["p50_vs_turn"] = ratio(results["first_turn"]["p50_ms"], results["turn"]["p50_ms"])
    by_history = turns.by_history
    split = statistics.median_low(h for h, _ in by_history)
    results["turn_by_history"] = {
        f"up_to_{split}_earlier_turns": summarise([t for h, t in by_history if h <= split]),
        f"over_{split}_earlier_turns": summarise([t for h, t in by_history if h > split]),
    }
    results["turn_ms_per_earlier_turn"] = slope_ms(by_history)
    results["model_pair_ms_per_earlier_turn"] = slope_ms(model.pair_by_history)
    results["threads"] = len(turns.threads)
    results["turns_per_thread"] = max(turns.history)
    results["thread_actor_creation_s"] = round(creation_s, 3)
    results["bad_answers"] = turns.bad_answers[:5]
    return results


async def bench_turns(world: Any, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Phase 1: the cold first turns, then warm turns against their floors in alternating rounds."""
    from agents.chat import Chat
    from runtime import get_agent

    token = world.token("alice")
    threads = [get_agent(Chat, f"turn-{i:02d}", storage_dir=root, namespace=NAMESPACE) for i in range(cfg["threads"])]
    bare_actor = Bare.remote()  # type: ignore[attr-defined]
    model = BareModel(world.model.base_url, len(threads))
    turns = Turns(threads, token)
    creation_s, first_turns = await open_threads(turns, model)
    variants = {
        "turn": turns.one,
        "model_call": model.call_one,
        "model_pair": model.timed_pair,
        "actor": lambda: bare_actor.noop.remote(),
    }
    for _ in range(cfg["warmup"]):
        for call in variants.values():
            await call()
    turns.by_history.clear()
    model.pair_by_history.clear()
    samples = await alternating_rounds(variants, cfg["turns"], cfg["rounds"])
    ray.kill(bare_actor)
    return turn_results(samples, first_turns, turns, model, creation_s)
