"""The dev authorization server's ping delivery (`devservers.authz.ping_sender`), against a real HTTP server
on 127.0.0.1 playing the client's notification endpoint.

A burst of approvals must not lose pings (it did: a thread and a connection per ping starved the process),
a client that could not take a ping (5xx, no answer) gets it again, and a refusal is final."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devservers.authz import ping_sender
from devservers.authz.ping_sender import PingSender
from devservers.server_thread import ServerThread
from tests.waiting import eventually


def wait_for(probe, timeout: float, what: str) -> None:
    asyncio.run(eventually(probe, timeout=timeout, what=what))


class Endpoint:
    """A notification endpoint that answers `plan[auth_req_id]` statuses in turn (then 204), taking
    `seconds` per ping, and counts what it received and how many pings it held at once."""

    def __init__(self, plan: dict[str, list[int]] | None = None, seconds: float = 0.0) -> None:
        self.plan = plan or {}
        self.seconds = seconds
        self.received: Counter[str] = Counter()
        self.bearers: set[str] = set()
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/ciba/notify", self.notify, methods=["POST"])])

    async def notify(self, request: Request) -> Response:
        auth_req_id = (await request.json())["auth_req_id"]
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.received[auth_req_id] += 1
            self.bearers.add(request.headers["authorization"])
            statuses = self.plan.get(auth_req_id, [])
            status = statuses.pop(0) if statuses else 204
        await asyncio.sleep(self.seconds)
        with self.lock:
            self.in_flight -= 1
        return Response(status_code=status)


def test_a_burst_of_pings_is_delivered_whole_and_bounded() -> None:
    endpoint = Endpoint(seconds=0.02)
    sender = PingSender()
    with ServerThread(endpoint.app) as server:
        started = time.monotonic()
        for i in range(2000):
            sender.send(server.url + "/ciba/notify", f"token-{i}", f"req-{i}")
        assert time.monotonic() - started < 2.0, "queueing a ping must not wait for its delivery"
        wait_for(lambda: sender.delivered == 2000, timeout=120, what="every ping delivered")
    assert len(endpoint.received) == 2000 and set(endpoint.received.values()) == {1}
    assert len(endpoint.bearers) == 2000
    assert endpoint.most_in_flight <= ping_sender.CONNECTIONS
    assert sender.given_up == 0


def test_a_ping_the_client_could_not_take_is_sent_again_and_a_refusal_is_final() -> None:
    endpoint = Endpoint(plan={"busy": [503, 503], "refused": [401]})
    sender = PingSender()
    with ServerThread(endpoint.app) as server:
        for auth_req_id in ("busy", "refused", "plain"):
            sender.send(server.url + "/ciba/notify", "token", auth_req_id)
        wait_for(lambda: sender.delivered == 3, timeout=30, what="the three pings settled")
        time.sleep(1.0)  # a retry of the refused ping, were there one, would come within 0.5 s
    assert endpoint.received == Counter({"busy": 3, "refused": 1, "plain": 1})


def test_a_ping_to_a_client_that_never_answers_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ping_sender, "RETRY_DELAYS", (0.05, 0.05))
    sender = PingSender()
    url = ServerThread(Endpoint().app).url + "/ciba/notify"  # a free port nobody listens on
    sender.send(url, "token", "lost")
    wait_for(lambda: sender.given_up == 1, timeout=30, what="the ping given up")
    assert sender.delivered == 0
