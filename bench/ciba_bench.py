"""CIBA approval-to-token latency against the embedded dev authorization server: poll vs ping, same run.

For each delivery (poll mode at interval 1 s, poll mode at interval 5 s, ping mode) and each flow, N
requests run at once: the client sends a backchannel request, an approver task approves it through the
dev server's JSON API at a random moment, and the client fetches the token. The latency is from the
server's approval time (`decided_at`) to the moment the client holds the token. In poll mode it is
bounded by the interval; in ping mode the dev server POSTs to a notification endpoint served here (CIBA
Core 1.0 section 10.2) and the client fetches the token at once (a lost ping would be caught by a check
every `--ping-fallback` s). Flows:

- `client`: `CIBAClient.authorize` + `poll` directly.
- `wrapper`: a tool wrapped by `with_async_user_confirmation` (encrypted SQLite store), re-run at each
  interrupt's `next_check_at` as the resumer does, or at once after `accept_ping`; latency ends when the
  tool has run with its token.

Polls per approval come from the dev server's own count. For the whole agent path (approval to the
thread's final message) see `bench/chat_bench.py`.

    python bench/ciba_bench.py [--requests 20] [--max-delay 3]

Prints a table and writes `bench/results/ciba_bench.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/ciba_bench.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

from bench.common import approve, pending_requests, report_head, summarise, wait_until, write_report  # noqa: E402
from bench.tables import left, print_table, right  # noqa: E402
from devservers.authz_server import DevAuthorizationServer  # noqa: E402
from devservers.server_thread import ServerThread  # noqa: E402
from tools.base import Tool, ToolContext  # noqa: E402
from tools.ciba.client import Approved, CIBAClient, Pending, SlowDown  # noqa: E402
from tools.ciba.confirmation import AsyncUserConfirmationTool, with_async_user_confirmation  # noqa: E402
from tools.ciba.credential_store import SQLiteCredentialStore  # noqa: E402
from tools.ciba.credentials_context import get_ciba_credentials  # noqa: E402
from tools.ciba.interrupts import AuthorizationPendingInterrupt, AuthorizationPollingInterrupt  # noqa: E402
from tools.ciba.ping import notification_target, ping_key  # noqa: E402

RESULTS = REPO / "bench" / "results" / "ciba_bench.json"
USER = "auth0|alice"
AUDIENCE = "http://localhost:5000/api/checkout"
DELIVERIES = (("poll", 1), ("poll", 5), ("ping", 5))
FLOWS = ("client", "wrapper")
PING_KEY = ping_key("ciba-bench-" + "0" * 32)


@dataclass
class PingInbox:
    """The client's notification endpoint. Pings arrive on a server thread; `route` maps a notification
    token to the key of the flow waiting for it (None: not ours, 401), which is woken on the bench's loop."""

    loop: asyncio.AbstractEventLoop
    route: Callable[[str], str | None]
    events: dict[str, asyncio.Event] = field(default_factory=dict)
    pings: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # key -> (token, auth_req_id)

    def expect(self, key: str) -> asyncio.Event:
        return self.events.setdefault(key, asyncio.Event())

    def _arrived(self, key: str, token: str, auth_req_id: str | None) -> None:
        self.pings[key] = (token, auth_req_id)
        self.expect(key).set()

    async def endpoint(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        key = self.route(token)
        if key is None:
            return Response(status_code=401)
        auth_req_id = (await request.json()).get("auth_req_id")
        self.loop.call_soon_threadsafe(self._arrived, key, token, auth_req_id)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/ciba/notify", self.endpoint, methods=["POST"])])


def wrapper_route(token: str) -> str | None:
    """The wrapper signs its own tokens, naming the tool call: the call's id is the key."""
    target = notification_target(PING_KEY, token)
    return target.tool_call_id if target else None


async def approve_later(http: httpx.AsyncClient, message: str, delay: float) -> float:
    """Find the request with `message` on the phone and approve it after `delay` s.

    Returns the server's approval time, the start of the latency being measured."""

    async def request_id() -> str | None:
        rows = await pending_requests(http, USER)
        return next((r["id"] for r in rows if r["binding_message"] == message), None)

    found = await wait_until(request_id, timeout=30, what=message, interval=0.05)
    await asyncio.sleep(delay)
    return float((await approve(http, found))["decided_at"])


async def wait_or_ping(ping: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if the ping arrives."""
    if ping is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(ping.wait(), seconds)
    except TimeoutError:
        pass


async def client_flow(client: CIBAClient, inbox: PingInbox | None, message: str, fallback: float) -> float:
    """Authorize, then poll (at the interval, or when pinged) until approved; the time the token arrived."""
    token = secrets.token_urlsafe(24) if inbox else None
    ping = inbox.expect(token) if inbox and token else None
    response = await client.backchannel_authenticate(
        USER, ["stock:buy"], message, audience=AUDIENCE, client_notification_token=token
    )
    interval = response.interval
    wait = fallback if ping else interval
    while True:
        await wait_or_ping(ping, wait)
        if ping is not None:
            ping.clear()
        result = await client.poll(response.auth_req_id, interval=interval)
        if isinstance(result, Approved):
            return time.time()
        if isinstance(result, SlowDown):
            interval, wait = result.interval, result.wait
        elif isinstance(result, Pending):
            wait = fallback if ping else interval
        else:
            raise RuntimeError(f"unexpected outcome {result!r}")


class Args(BaseModel):
    n: int


async def wrapper_flow(tool: AsyncUserConfirmationTool, inbox: PingInbox | None, n: int) -> float:
    ctx = ToolContext(tool_call_id=f"call-{n}", thread_id="bench", owner=USER)
    ping = inbox.expect(ctx.tool_call_id) if inbox else None
    while True:
        try:
            return float(await tool.run(Args(n=n), ctx))
        except (AuthorizationPendingInterrupt, AuthorizationPollingInterrupt) as interrupt:
            await wait_or_ping(ping, max(0.0, (interrupt.next_check_at or time.time() + 1) - time.time()))
            if inbox is not None and ping is not None and ping.is_set():
                ping.clear()
                token, auth_req_id = inbox.pings[ctx.tool_call_id]
                await tool.confirmation.flow.accept_ping(ctx, token, auth_req_id)  # the next run polls at once


async def buy(n: int) -> float:
    """The tool under confirmation: it runs only with the user's CIBA credentials; when it ran."""
    assert get_ciba_credentials() is not None
    return time.time()


@dataclass
class Rig:
    """One row's parts: the dev authorization server, the ping receiver (ping mode only), the CIBA client,
    and the credential store the wrapper keeps its requests in."""

    server: DevAuthorizationServer
    client: CIBAClient
    store: SQLiteCredentialStore
    tmp: tempfile.TemporaryDirectory[str]
    inbox: PingInbox | None = None
    receiver: ServerThread | None = None

    @classmethod
    def start(cls, delivery: str, interval: int, flow: str) -> Rig:
        server = DevAuthorizationServer(api_audience="https://bench/api", default_interval=interval).start()
        inbox: PingInbox | None = None
        receiver: ServerThread | None = None
        if delivery == "ping":
            inbox = PingInbox(asyncio.get_running_loop(), wrapper_route if flow == "wrapper" else lambda token: token)
            receiver = ServerThread(inbox.app()).start()
            server.state.notification_endpoints[server.client_id] = receiver.url + "/ciba/notify"
        client = CIBAClient(issuer=server.issuer, client_id=server.client_id, client_secret=server.client_secret)
        tmp = tempfile.TemporaryDirectory()
        store = SQLiteCredentialStore(Path(tmp.name) / "bench.sqlite3", "bench-key-" + "0" * 32)
        return cls(server, client, store, tmp, inbox, receiver)

    async def close(self) -> None:
        await self.client.aclose()
        await self.store.close()
        self.tmp.cleanup()
        if self.receiver is not None:
            self.receiver.stop()
        self.server.stop()


def flows(rig: Rig, delivery: str, flow: str, options: argparse.Namespace, n: int) -> list[Awaitable[float]]:
    """`n` purchases of one flow, each returning when its token arrived (the tool ran, for the wrapper)."""
    if flow == "client":
        return [client_flow(rig.client, rig.inbox, f"Buy {i} BENCH", options.ping_fallback) for i in range(n)]
    tool = with_async_user_confirmation(
        Tool(buy, name="buy", description="bench", parameters=Args),
        scopes=["stock:buy"],
        binding_message=lambda n: f"Buy {n} BENCH",
        store=rig.store,
        client=rig.client,
        delivery_mode=delivery,
        ping_fallback=options.ping_fallback,
        ping_key=PING_KEY,
    )
    return [wrapper_flow(tool, rig.inbox, i) for i in range(n)]


async def run_row(delivery: str, interval: int, flow: str, options: argparse.Namespace) -> dict[str, Any]:
    """One delivery and flow: the purchases at once, each approved after its random delay."""
    rig = Rig.start(delivery, interval, flow)
    rng = random.Random(options.seed)
    delays = [rng.uniform(0.0, options.max_delay) for _ in range(options.requests)]
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(base_url=rig.server.url, timeout=10) as http:
            purchases = flows(rig, delivery, flow, options, len(delays))
            approvals = [approve_later(http, f"Buy {n} BENCH", delays[n]) for n in range(len(delays))]
            tokens, approved_at = await asyncio.gather(asyncio.gather(*purchases), asyncio.gather(*approvals))
            stats = (await http.get("/dev/stats")).json()
    finally:
        await rig.close()
    polls = list(stats["polls_by_request"].values())
    return {
        "delivery": delivery,
        "interval_s": interval,
        "flow": flow,
        "requests": len(delays),
        "approval_to_token": summarise([t - a for t, a in zip(tokens, approved_at, strict=True)]),
        "polls_per_approval": {"mean": round(sum(polls) / len(polls), 2), "max": max(polls)},
        "pings_sent": stats.get("pings_sent", 0),
        "wall_s": round(time.perf_counter() - started, 3),
    }


def print_report(report: dict[str, Any]) -> None:
    """One row per delivery and flow: approval -> token, and the polls it took."""
    columns = (
        left("delivery"),
        right("interval"),
        left("flow"),
        *(right(h) for h in ("n", "p50 ms", "p99 ms", "max ms", "polls/approval")),
    )
    rows = []
    for row in report["runs"]:
        s, polls = row["approval_to_token"], row["polls_per_approval"]
        rows.append(
            [
                row["delivery"],
                f"{row['interval_s']} s",
                row["flow"],
                str(row["requests"]),
                f"{s['p50_ms']:.0f}",
                f"{s['p99_ms']:.0f}",
                f"{s['max_ms']:.0f}",
                f"{polls['mean']} (max {polls['max']})",
            ]
        )
    title = f"CIBA approval-to-token latency ({report['machine']['cpu_count']} CPUs)"
    print_table(title, columns, rows, width=140)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="approvals per delivery and flow")
    parser.add_argument("--max-delay", type=float, default=3.0, help="approvals happen uniformly in [0, this] s")
    parser.add_argument("--ping-fallback", type=float, default=30.0, help="ping mode: seconds between checks")
    parser.add_argument("--flows", default=",".join(FLOWS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    runs = [
        await run_row(delivery, interval, flow, options)
        for delivery, interval in DELIVERIES
        for flow in options.flows.split(",")
    ]
    report = {
        **report_head("ciba_bench"),
        "params": {k: v for k, v in vars(options).items() if k != "output"},
        "runs": runs,
    }
    print_report(report)
    write_report(options.output, report)


if __name__ == "__main__":
    asyncio.run(main())
