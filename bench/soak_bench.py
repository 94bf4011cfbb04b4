"""Soak with faults: many users chat and buy over HTTP while the thread hosts crash, the checkout API
restarts and the authorization server stalls; afterwards nothing may be lost, doubled or stuck.

The whole stack runs locally (`agentrt.stack.Stack`: Ray, the Serve ingress, the dev authorization server,
the demo checkout API, the offline model). Then, for `--minutes`:

- `--users` simulated users, each in their own thread, send messages (each with its own `message_id`, and
  resent with it after a 503 or a lost answer, as a careful client does), read their messages and pending
  approvals, and now and then buy a stock (one purchase pending at a time);
- their phone (the dev server's JSON API) approves or denies each purchase at random;
- a fault injector SIGKILLs a random agent host every `--kill-every` s, restarts the checkout API every
  `--checkout-every` s (down a few seconds), loses an answer every `--lost-answer-every` s (the checkout's
  after it placed the order, or the token endpoint's after it handed out tokens, replaced by a 502/504)
  and stalls the authorization server once for `--stall` s
  (connections accepted, nothing answered).

Then it drains (no new messages, faults stopped, the phone still deciding) until every purchase is
finished, and checks, from the threads' own files and the checkout's database:

1. every acknowledged user message is stored exactly once, and nothing is stored that was not sent;
2. orders == the purchases the threads record as made, per user (none twice, none lost), and no approval
   wasted: an approval whose tokens went to a poll that never got its answer (its host was killed
   mid-poll) is asked again, not failed (`approvals_lost_and_asked_again` counts them);
3. no tool call is left in a non-terminal state;
4. no 5xx, except 503s with `Retry-After` while the authorization server stalls;
5. the Ray workers' memory at the end within 10% of its value after warm-up.

Prints a table and writes `bench/results/soak_bench.json`; exits 1 if an invariant is violated. Deadlines
are taken from "now" at each wait. A short run is `tests/test_soak.py`.

    python bench/soak_bench.py [--users 50] [--minutes 5] [--kill-every 30] [--checkout-every 60] [--stall 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    local_stack,
    log,
    machine_info,
    ray_worker_pids,
    rss_mib,
    summarise,
    write_report,
)
from bench.soak_checks import Checks, Ledger, Traffic  # noqa: E402
from bench.tables import left, print_table, right  # noqa: E402

TICKERS = ("MSFT", "AAPL", "NVDA", "GOOGL", "AMZN")


@dataclass
class SoakConfig:
    users: int = 50
    minutes: float = 5.0
    buy_share: float = 0.25
    """Of a user's messages (when they have no purchase pending), the share that buys."""
    approve_share: float = 0.7
    kill_every: float = 30.0
    checkout_every: float = 60.0
    checkout_down: float = 3.0
    lost_answer_every: float = 20.0
    """Every so often, alternately: the checkout places the next order and loses its answer (a 504, or held
    past the client's timeout); the authorization server hands out tokens and a 502/504 replaces the answer."""
    stall: float = 30.0
    stall_at: float = 0.4
    """When the stall starts, as a share of the run."""
    warmup: float = 0.2
    """The share of the run after which memory is first measured."""
    drain: float = 240.0
    seed: int = 7


class Soak:
    """One soak: the users, their phone and the fault injector against a running stack, then the drain and
    the report (the invariants are `bench.soak_checks.Checks`)."""

    def __init__(self, cfg: SoakConfig, stack: Any, storage: Path, namespace: str) -> None:
        self.cfg = cfg
        self.stack = stack
        self.storage = storage
        self.namespace = namespace
        self.rng = random.Random(cfg.seed)
        self.ledger = Ledger()
        self.traffic = Traffic()
        self.run_id = os.urandom(3).hex()
        self.memory: dict[str, float] = {}
        self.subjects: dict[str, str] = {}
        """thread id -> its owner's `sub`."""
        self.checks = Checks(self.ledger, self.traffic, storage, stack.authz.url, self.subjects, self.memory)

    # -- users ---------------------------------------------------------------------------------------
    async def call(
        self, http: httpx.AsyncClient, method: str, path: str, route: str, body: Any = None
    ) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await http.request(method, path, json=body)
        except httpx.HTTPError as exc:  # a hang (read timeout) or a dropped connection
            self.traffic.lost_answers[f"{route} {type(exc).__name__}"] += 1
            return None
        self.traffic.record(route, response, time.perf_counter() - started)
        return response

    async def send(self, http: httpx.AsyncClient, thread: str, content: str, message_id: str) -> bool:
        """Send until acknowledged (resending with the same id after a 503 or a lost answer). The deadline is
        from now: a user's message may wait out a stall or a restart."""
        self.ledger.sent[thread].add(message_id)
        deadline = time.monotonic() + 180.0
        body = {"content": content, "message_id": message_id}
        while time.monotonic() < deadline:
            response = await self.call(http, "POST", f"/threads/{thread}/messages", "POST /messages", body)
            if response is not None and response.status_code == 200:
                self.ledger.acknowledged[thread].add(message_id)
                return True
            if response is not None and response.status_code < 500 and response.status_code != 429:
                self.traffic.refused.append(f"{thread} {message_id}: {response.status_code} {response.text[:160]}")
                return False
            retry = float(response.headers.get("retry-after") or 1) if response is not None else 1.0
            await asyncio.sleep(min(retry, 5.0))
        return False

    def thread_of(self, index: int) -> str:
        return f"soak-{self.run_id}-{index}"

    async def create_thread(self, http: httpx.AsyncClient, thread: str) -> None:
        for _ in range(60):
            response = await self.call(http, "POST", "/threads", "POST /threads", {"thread_id": thread})
            if response is not None and response.status_code in (200, 201):
                return
            if response is not None and response.status_code < 500:
                raise RuntimeError(f"thread refused: {response.status_code} {response.text[:200]}")
            await asyncio.sleep(1.0)
        raise RuntimeError(f"could not create {thread}")

    async def user(self, index: int, token: str, end: float) -> None:
        rng = random.Random(self.cfg.seed * 1000 + index)
        thread = self.thread_of(index)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=self.stack.urls.api, headers=headers, timeout=90.0) as http:
            await self.create_thread(http, thread)
            n = 0
            while time.monotonic() < end:
                n += 1
                ticker = rng.choice(TICKERS)
                content = f"what is {ticker} trading at?"
                if rng.random() < self.cfg.buy_share:
                    pending = await self.call(http, "GET", f"/threads/{thread}/interrupts", "GET /interrupts")
                    if pending is not None and pending.status_code == 200 and not pending.json()["interrupts"]:
                        content = f"buy {rng.randint(1, 5)} shares of {ticker}"
                await self.send(http, thread, content, f"u{index}-m{n}")
                if rng.random() < 0.3:
                    await self.call(http, "GET", f"/threads/{thread}/messages", "GET /messages")
                await asyncio.sleep(rng.uniform(0.3, 1.5))

    # -- the users' phones -----------------------------------------------------------------------------
    async def phone(self, stop: asyncio.Event) -> None:
        base = self.stack.authz.url
        async with httpx.AsyncClient(base_url=base, timeout=5.0) as http:
            while not stop.is_set():
                try:
                    pending = (await http.get("/dev/ciba/requests", params={"status": "pending"})).json()
                    for request in pending:
                        if request["id"] in self.ledger.decisions:
                            continue
                        approve = self.rng.random() < self.cfg.approve_share
                        action = "approve" if approve else "deny"
                        (await http.post(f"/dev/ciba/requests/{request['id']}/{action}")).raise_for_status()
                        self.ledger.decisions[request["id"]] = {"approved": approve, "sub": request["sub"]}
                except (httpx.HTTPError, ValueError):
                    pass  # stalled or restarting: decide on the next round
                await asyncio.sleep(0.5)

    # -- faults ----------------------------------------------------------------------------------------
    async def kill_a_host(self) -> None:
        import ray

        from runtime.placement import host_name
        from runtime.placement_view import current_placement

        slots = current_placement(self.storage.resolve(), self.namespace).hosts
        slot = self.rng.randrange(slots)
        try:
            host = ray.get_actor(host_name(self.storage.resolve(), slot), namespace=self.namespace)
            stats = await asyncio.wait_for(host.stats.remote(), 10)
            os.kill(int(stats["pid"]), signal.SIGKILL)
            self.ledger.faults["host_sigkill"] += 1
        except (ValueError, TimeoutError, ProcessLookupError, ray.exceptions.RayError):
            self.ledger.faults["host_sigkill_missed"] += 1

    async def restart_checkout(self) -> None:
        await asyncio.to_thread(self.stack.checkout.stop)
        await asyncio.sleep(self.cfg.checkout_down)
        await asyncio.to_thread(self.stack.checkout.start)
        self.ledger.faults["checkout_restart"] += 1

    def lose_an_answer(self, turn: int) -> None:
        """Arm the next lost answer: at the checkout (after it placed the order) or at the authorization
        server (after it handed out the tokens); the flow must find out, never double nor waste anything."""
        if turn % 2 == 0:
            self.stack.checkout.lose_next_answers(1, 504 if turn % 4 == 0 else None)
            self.ledger.faults["checkout_answer_lost"] += 1
        else:
            self.stack.authz.replace_answers(1, 502 if turn % 4 == 1 else 504, "token")
            self.ledger.faults["authz_gateway_error_after_acting"] += 1

    async def faults(self, start: float, end: float) -> None:
        rng = random.Random(self.cfg.seed + 1)
        next_kill = start + self.cfg.kill_every * rng.uniform(0.5, 1.0)
        next_checkout = start + self.cfg.checkout_every * rng.uniform(0.5, 1.0)
        stall_at = start + self.cfg.stall_at * (end - start)
        stalled = self.cfg.stall <= 0
        next_loss, losses = start + self.cfg.lost_answer_every * rng.uniform(0.3, 0.6), 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_kill:
                await self.kill_a_host()
                next_kill = now + self.cfg.kill_every * rng.uniform(0.5, 1.5)
            if now >= next_checkout:
                await self.restart_checkout()
                next_checkout = time.monotonic() + self.cfg.checkout_every * rng.uniform(0.5, 1.5)
            if self.cfg.lost_answer_every > 0 and now >= next_loss:
                self.lose_an_answer(losses)
                losses += 1
                next_loss = now + self.cfg.lost_answer_every * rng.uniform(0.5, 1.5)
            if not stalled and now >= stall_at:
                self.stack.authz.stall(self.cfg.stall)
                self.ledger.stall_windows.append((now, now + self.cfg.stall))
                self.ledger.faults["authz_stall"] += 1
                stalled = True
            await asyncio.sleep(0.25)

    # -- measuring -------------------------------------------------------------------------------------
    def workers_rss_mib(self) -> float:
        """The resident memory of all Ray worker processes on the machine."""
        return round(sum(rss_mib(pid) for pid in ray_worker_pids()), 1)

    async def memory_after_warmup(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        self.memory["after_warmup_mib"] = self.workers_rss_mib()

    async def drain(self, stop_phone: asyncio.Event) -> float:
        """Until every purchase is finished (or `drain` s from now). Returns the seconds it took."""
        started = time.monotonic()
        deadline = started + self.cfg.drain
        next_report = started + 5.0
        while time.monotonic() < deadline:
            unfinished = self.checks.unfinished_calls()
            if not unfinished:
                break
            if time.monotonic() >= next_report:  # what the drain waits for, as it goes
                log(f"draining: still unfinished {unfinished}")
                next_report += 5.0
            await asyncio.sleep(1.0)
        stop_phone.set()
        return round(time.monotonic() - started, 1)

    # -- the run -------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        names = [f"soak{i}" for i in range(cfg.users)]
        async with httpx.AsyncClient(timeout=30.0) as http:
            tokens = []
            for index, name in enumerate(names):
                response = await http.post(f"{self.stack.authz.url}/dev/login", json={"username": name})
                response.raise_for_status()
                tokens.append(response.json()["access_token"])
                self.subjects[self.thread_of(index)] = response.json()["sub"]
        start = time.monotonic()
        end = start + cfg.minutes * 60
        stop_phone = asyncio.Event()
        phone = asyncio.create_task(self.phone(stop_phone))
        memory = asyncio.create_task(self.memory_after_warmup(start + cfg.warmup * (end - start)))
        faults = asyncio.create_task(self.faults(start, end))
        await asyncio.gather(*(self.user(i, token, end) for i, token in enumerate(tokens)))
        await faults
        await memory
        log("load over; draining (faults stopped, the phone still deciding) ...")
        await asyncio.sleep(self.stack.authz.state.stall.remaining())
        drained_in = await self.drain(stop_phone)
        await phone
        self.memory["end_mib"] = self.workers_rss_mib()
        return self.report(time.monotonic() - start, drained_in)

    def report(self, seconds: float, drained_in: float) -> dict[str, Any]:
        violations = self.checks.violations()
        counts = {
            name: (len(found) if isinstance(found, list | dict) else int(bool(found)))
            for name, found in violations.items()
        }
        return {
            "config": asdict(self.cfg),
            "seconds": round(seconds, 1),
            "drained_in_s": drained_in,
            "requests": sum(self.traffic.statuses.values()),
            "routes": {route: summarise(values) for route, values in sorted(self.traffic.latencies.items())},
            "statuses": dict(sorted(self.traffic.statuses.items())),
            "lost_answers": dict(self.traffic.lost_answers),
            "faults": dict(self.ledger.faults),
            "messages_acknowledged": sum(len(v) for v in self.ledger.acknowledged.values()),
            "purchases_decided": Counter(
                "approved" if d["approved"] else "denied" for d in self.ledger.decisions.values()
            ),
            "orphans": self.checks.orphans(),
            "orders_placed": sum(self.checks.orders().values()),
            "approvals_lost_and_asked_again": self.checks.approvals_lost_on_the_way(),
            "pings": {
                "sent": self.stack.authz.state.pings_sent,
                "delivered": self.stack.authz.state.pinger.delivered,
                "given_up": self.stack.authz.state.pinger.given_up,
            },
            "memory": self.memory,
            "violation_counts": counts,
            "violations": violations,
            "machine": machine_info(),
        }


def soak_stack(cfg: SoakConfig, storage: Path, namespace: str) -> Any:
    env = {
        "CIBA_DELIVERY_MODE": "ping",
        "CIBA_PING_FALLBACK_SECONDS": "5",
        "AGENT_MAX_THREADS_PER_USER": "10",
        "AGENTRT_MAX_TURNS_PER_MINUTE": "100000",  # load from a few users, not abuse
        "AGENTRT_MAX_CONCURRENT_TURNS": "1000",
    }
    return local_stack(storage, namespace, 1, env, dev_users=tuple(f"soak{i}" for i in range(cfg.users)))


async def run_soak(cfg: SoakConfig, storage: Path | None = None) -> dict[str, Any]:
    """Start a stack, soak it, stop it; the report (see the module docstring)."""
    storage = storage or Path(tempfile.mkdtemp(prefix="agentrt-soak-"))
    namespace = f"agents-soak-{os.urandom(3).hex()}"
    stack = soak_stack(cfg, storage, namespace)
    await asyncio.to_thread(stack.start)
    try:
        return await Soak(cfg, stack, storage, namespace).run()
    finally:
        await asyncio.to_thread(stack.stop)


def print_report(report: dict[str, Any]) -> None:
    """The latency per route, then the faults, the outcomes and the invariants' violations."""
    title = f"soak: {report['config']['users']} users, {report['seconds']} s, {report['requests']} requests"
    columns = (left("route"), *(right(h) for h in ("n", "p50 ms", "p99 ms", "max ms")))
    rows = [
        [route, str(s["n"]), str(s["p50_ms"]), str(s["p99_ms"]), str(s["max_ms"])]
        for route, s in report["routes"].items()
    ]
    print_table(title, columns, rows, width=120)
    print(f"faults injected: {report['faults']}")
    print(f"statuses: {report['statuses']}")
    print(f"lost answers (client timeouts, dropped connections): {report['lost_answers']}")
    print(f"purchases decided: {dict(report['purchases_decided'])}; orders placed: {report['orders_placed']}")
    print(f"approval requests never collected by an agent (sent again after a timeout): {report['orphans']}")
    lost = report["approvals_lost_and_asked_again"]
    print(f"approvals lost with their answer (host killed mid-poll), asked again: {lost}")
    print(f"pings (sent, delivered, given up): {report['pings']}")
    print(f"memory: {report['memory']}; drained in {report['drained_in_s']} s")
    print(f"invariant violations: {report['violation_counts']} (total {sum(report['violation_counts'].values())})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakConfig()
    knobs = (
        "users",
        "minutes",
        "kill_every",
        "checkout_every",
        "lost_answer_every",
        "stall",
        "buy_share",
        "approve_share",
        "drain",
        "seed",
    )
    for name in knobs:
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak_bench.json")
    args = parser.parse_args()
    cfg = SoakConfig(**{name: getattr(args, name) for name in knobs})
    report = asyncio.run(run_soak(cfg))
    print_report(report)
    write_report(args.out, report)
    return 1 if sum(report["violation_counts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
