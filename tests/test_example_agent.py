"""An agent of your own (`examples/travel_agent.py`), served by `agentrt serve --agent module:Class` as a
user runs it, and its two stories over HTTP: a CIBA-protected booking with its own scope, audience and
binding message approved on the dev server's phone API, and an in-chat confirmed cancellation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve_process import served
from tests.test_cli import clean_env, run_cli
from tests.waiting import eventually

pytestmark = pytest.mark.slow


def last_assistant(messages: list[dict[str, Any]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant" and m["content"]), "")


@pytest.fixture
def travel_api(tmp_path: Path) -> Iterator[str]:
    """`agentrt serve --agent examples.travel_agent:TravelAgent`, embedded defaults; yields the API URL."""
    with served(tmp_path, "--agent", "examples.travel_agent:TravelAgent") as (api, _):
        yield api


BOOK = '/book_trip {"destination": "Paris", "seats": 2}'
CANCEL = '/cancel_trip {"destination": "Paris"}'


async def test_an_agent_of_your_own_books_after_approval_and_cancels_after_confirmation(travel_api: str) -> None:
    async with httpx.AsyncClient(base_url=travel_api, timeout=60) as anonymous:
        config = (await anonymous.get("/config")).json()
        token = (await anonymous.post("/dev/login", json={"username": "alice"})).json()["access_token"]
    async with (
        httpx.AsyncClient(base_url=travel_api, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http,
        httpx.AsyncClient(base_url=config["dev_authz_url"], timeout=30) as phone,
    ):
        assert (await http.post("/threads", json={"thread_id": "trip"})).status_code == 201
        sent = await http.post("/threads/trip/messages", json={"content": BOOK})
        assert sent.status_code == 200, sent.text
        assert [m["state"] for m in sent.json()["messages"] if m["role"] == "tool"] == ["pending-authorization"]

        async def the_request() -> dict[str, Any] | None:
            rows = (await phone.get("/dev/ciba/requests", params={"user": "alice", "status": "pending"})).json()
            return next((r for r in rows if r["binding_message"] == "Book 2 seats to Paris"), None)

        request = await eventually(the_request, timeout=30, what="the booking's CIBA request")
        assert request["audience"] == "https://travel.example/api"
        assert "travel:book" in request["scope"].split()
        assert (await phone.post(f"/dev/ciba/requests/{request['id']}/approve")).status_code == 200

        async def booked() -> str | None:
            text = last_assistant((await http.get("/threads/trip/messages")).json()["messages"])
            return text if "Booked 2 seats to Paris" in text else None

        await eventually(booked, timeout=30, what="the booking after the approval")

        sent = await http.post("/threads/trip/messages", json={"content": CANCEL})
        calls = [m for m in sent.json()["messages"] if m["role"] == "tool"]
        assert [c["state"] for c in calls] == ["awaiting-confirmation"]
        confirmed = await http.post(
            "/threads/trip/tool-results", json={"tool_call_id": calls[0]["tool_call_id"], "approved": True}
        )
        assert confirmed.status_code == 200, confirmed.text
        assert "Cancelled the trip to Paris" in last_assistant(confirmed.json()["messages"])


def test_serve_refuses_an_agent_class_that_is_not_a_thread_agent(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli(["serve", "--agent", "agents.directory:ThreadDirectory"], clean_env(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "not a ThreadAgent subclass" in result.stdout + result.stderr
    assert time.monotonic() - started < 30  # refused before anything starts


def test_serve_refuses_a_public_host_with_the_dev_sign_in_unless_asked(tmp_path: Path) -> None:
    """`/dev/login` hands out demo users' tokens: on 0.0.0.0 that is anyone on the network's."""
    result = run_cli(["serve", "--host", "0.0.0.0"], clean_env(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "--insecure-dev-login" in result.stdout + result.stderr
