"""Changing the number of agent hosts on a running system, as its own process (a Ray of its own).

Twenty chat threads (four per user, five users) answer question after question through the runtime's
handles while five purchases wait for their users' approval; the host count goes from 2 to 3, then from 3
to 1, with the turns running, and the users approve meanwhile. Every agent's storage is in a real
PostgreSQL database, which audits every write to the threads' messages and tool calls with the writing
activation's fencing epoch (`tests.node_loss_scenario.audit_writes`). A sampler asks every host, every
50 ms, which agents it has live: an agent live in two hosts at once would show there.

Prints one JSON line with what it saw; `tests/test_placement_resize.py` checks it.
Run: `python tests/resize_scenario.py <storage dir> <postgresql url>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dev_services import API_AUDIENCE, CHECKOUT_AUDIENCE, services_env  # noqa: E402
from tests.node_loss_scenario import _orders, _pending, audit_writes, stale_writes_accepted, until  # noqa: E402

USERS = ("alice", "bob", "carol", "dave", "erin")
THREADS_PER_USER = 4
NAMESPACE = "agents-resize"


def thread_ids() -> list[tuple[str, str]]:
    return [(user, f"resize-{user}-{k}") for user in USERS for k in range(THREADS_PER_USER)]


class Users:
    """The users' side: their tokens, the messages the threads acknowledged, and what they were told."""

    def __init__(self, storage_dir: Path, tokens: dict[str, str]) -> None:
        from agents.chat import Chat
        from runtime import get_agent

        self.tokens = tokens
        self.threads = {tid: get_agent(Chat, tid, storage_dir=storage_dir) for _, tid in thread_ids()}
        self.owner = dict((tid, user) for user, tid in thread_ids())
        self.acknowledged: dict[str, list[str]] = {tid: [] for _, tid in thread_ids()}
        self.errors: list[str] = []

    async def send(self, tid: str, content: str, message_id: str) -> None:
        try:
            await self.threads[tid].send_message(self.tokens[self.owner[tid]], content, message_id)
        except Exception as exc:  # a caller must never see the move: any error is a failure of the test
            self.errors.append(f"{tid} {message_id}: {type(exc).__name__}: {exc}"[:300])
            return
        self.acknowledged[tid].append(message_id)

    async def chatter(self, stop: asyncio.Event) -> None:
        async def one(tid: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await self.send(tid, f"what is MSFT trading at? ({n})", f"{tid}-q{n}")

        await asyncio.gather(*(one(tid) for _, tid in thread_ids()))

    def total(self) -> int:
        return sum(len(ids) for ids in self.acknowledged.values())

    async def check(self) -> dict[str, Any]:
        stored_twice, missing, unfinished = [], [], []
        for tid, handle in self.threads.items():
            messages = [m.model_dump() for m in await handle.get_messages(self.tokens[self.owner[tid]])]
            ids = Counter(m["id"] for m in messages if m["role"] == "user")
            stored_twice += [i for i, n in ids.items() if n > 1]
            missing += [i for i in self.acknowledged[tid] if ids[i] != 1]
            calls = {c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []}
            finished = {m["tool_call_id"] for m in messages if m["role"] == "tool" and m["state"] == "result"}
            unfinished += [f"{tid}: {call}" for call in sorted(calls - finished)]
        return {
            "acknowledged": self.total(),
            "stored_twice": stored_twice,
            "acknowledged_but_missing": missing,
            "unfinished_tool_calls": unfinished,
            "errors": self.errors,
        }


class LiveSampler:
    """Asks every host of the root which agents it has live, every 50 ms, and keeps any name seen in two."""

    def __init__(self, storage_dir: Path) -> None:
        self.root = storage_dir.resolve()
        self.samples = 0
        self.in_two_hosts: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        import ray

        from runtime.placement import host_name

        while not stop.is_set():
            hosts = []
            for slot in range(4):
                try:
                    hosts.append(ray.get_actor(host_name(self.root, slot), namespace=NAMESPACE))
                except ValueError:
                    continue
            seen: Counter[str] = Counter()
            for outcome in await asyncio.gather(*(h.stats.remote() for h in hosts), return_exceptions=True):
                if isinstance(outcome, dict):
                    seen.update(outcome["live_names"])
            self.in_two_hosts |= {name for name, n in seen.items() if n > 1}
            self.samples += 1
            await asyncio.sleep(0.05)


async def scenario(storage_dir: Path, storage_url: str) -> dict[str, Any]:
    import ray

    import runtime
    from devservers.authz_server import DevAuthorizationServer
    from devservers.checkout_api import CheckoutServer
    from devservers.offline_model import OfflineModelServer

    authz = DevAuthorizationServer(api_audience=API_AUDIENCE, default_interval=1, users=USERS).start()
    checkout = CheckoutServer(issuer=authz.issuer, audience=CHECKOUT_AUDIENCE).start()
    model = OfflineModelServer().start()
    env = {
        **services_env(authz, checkout, model),
        "CIBA_DELIVERY_MODE": "poll",
        "AGENT_HOSTS": "2",
        "AGENT_STORAGE_URL": storage_url,
        "PYTHONPATH": str(REPO),
    }
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, runtime_env={"env_vars": env})
    runtime.init(storage_dir=storage_dir, namespace=NAMESPACE, start_hosts=True)
    async with httpx.AsyncClient(base_url=authz.url, timeout=10) as http:
        tokens = {u: (await http.post("/dev/login", json={"username": u})).json()["access_token"] for u in USERS}
        users = Users(storage_dir, tokens)
        await users.send(f"resize-{USERS[0]}-0", "hello", "first")  # the class's tables exist: audit them
        await asyncio.to_thread(audit_writes, storage_url)
        await asyncio.gather(*(users.send(f"resize-{u}-0", "Buy 2 shares of NVDA", f"{u}-buy") for u in USERS))
        requests = await until(lambda: _pending(http, len(USERS)), timeout=60, what="the purchases' approvals")
        stop, sampler = asyncio.Event(), LiveSampler(storage_dir)
        background = [asyncio.ensure_future(users.chatter(stop)), asyncio.ensure_future(sampler.run(stop))]
        await until(lambda: _at_least(users, 40), timeout=60, what="turns running")
        grow = await asyncio.to_thread(runtime.set_host_count, 3)
        for request in requests[:2]:
            (await http.post(f"/dev/ciba/requests/{request['id']}/approve")).raise_for_status()
        await _more_turns(users, 40, "turns on three hosts")
        spread_over_three = await _live_per_host(storage_dir)
        shrink = await asyncio.to_thread(runtime.set_host_count, 1)
        for request in requests[2:]:
            (await http.post(f"/dev/ciba/requests/{request['id']}/approve")).raise_for_status()
        await until(lambda: _orders(checkout, len(requests)), timeout=120, what="the orders")
        await _more_turns(users, 40, "turns on one host")
        stop.set()
        await asyncio.gather(*background)
        await asyncio.sleep(2.0)  # an order placed twice would have reached the checkout by now
        seen = {
            "grow": grow,
            "shrink": shrink,
            "live_per_host_on_three": spread_over_three,
            "live_per_host_at_end": await _live_per_host(storage_dir),
            "users": await users.check(),
            "orders": await _orders(checkout, 0),
            "approvals": len(requests),
            "backchannel_requests": (await http.get("/dev/stats")).json()["backchannel_requests"],
            "samples": sampler.samples,
            "live_in_two_hosts": sorted(sampler.in_two_hosts),
            "fenced": sum(s["fenced"] for s in await _host_stats(storage_dir)),
        }
    seen["writes_audited"] = await asyncio.to_thread(stale_writes_accepted, storage_url)
    ray.shutdown()
    return seen


async def _at_least(users: Users, count: int) -> bool:
    return users.total() >= count


async def _more_turns(users: Users, count: int, what: str) -> None:
    target = users.total() + count
    await until(lambda: _at_least(users, target), timeout=60, what=what)


async def _host_stats(storage_dir: Path) -> list[dict[str, Any]]:
    from tests.lifecycle import host_stats

    return await host_stats(storage_dir, NAMESPACE)


async def _live_per_host(storage_dir: Path) -> dict[str, int]:
    return {str(s["slot"]): s["live"] for s in await _host_stats(storage_dir)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scenario(Path(sys.argv[1]), sys.argv[2]))))
