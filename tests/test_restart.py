"""A purchase pending when `agentrt serve` stops still completes, exactly once, after it starts again in the
same folder (issue 9, test 1): the dev client secret and encryption key are kept in the storage folder, and
the dev authorization server keeps its pending requests there."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devservers.server_thread import free_port
from tests.test_cli import Output, agentrt_command, clean_env

pytestmark = pytest.mark.slow


def start_serve(env: dict[str, str], data: Path) -> tuple[subprocess.Popen[str], Output, str]:
    port = free_port()
    command = agentrt_command() + ["serve", "--port", str(port), "--storage-dir", str(data), "--num-cpus", "2"]
    command += ["--ciba-interval", "1"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output = Output(proc)
    output.wait_for(r"Ctrl-C to stop", timeout=90)
    return proc, output, f"http://127.0.0.1:{port}"


def stop_serve(proc: subprocess.Popen[str], how: str) -> None:
    if how == "sigint":
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    else:  # the whole process group, Ray's own processes included: nothing gets to clean up
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def orders_in(data: Path) -> int:
    with sqlite3.connect(data / "checkout-orders.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]


def login(api: str) -> dict[str, str]:
    token = httpx.post(f"{api}/dev/login", json={"username": "alice"}, timeout=10).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def buy_and_wait(api: str, thread: str, quantity: int) -> None:
    """Ask for a purchase; it waits for the user's approval."""
    sent = httpx.post(
        f"{api}/threads/{thread}/messages",
        json={"content": f"buy {quantity} shares of MSFT"},
        headers=login(api),
        timeout=60,
    )
    assert sent.status_code == 200, sent.text
    (pending,) = httpx.get(f"{api}/threads/{thread}/interrupts", headers=login(api), timeout=10).json()["interrupts"]
    assert pending["binding_message"] == f"Buy {quantity} MSFT"


def approve_and_see_it_bought(api: str, thread: str, quantity: int, data: Path) -> None:
    """After the restart: the request still waits on the phone; approved, the purchase completes once."""
    auth = login(api)
    dev = httpx.get(f"{api}/config", timeout=10).json()["dev_authz_url"]
    requests = httpx.get(f"{dev}/dev/ciba/requests", params={"user": "alice"}, timeout=10).json()
    (request,) = [r for r in requests if r["status"] == "pending"]
    assert request["binding_message"] == f"Buy {quantity} MSFT"
    orders_before = orders_in(data)
    httpx.post(f"{dev}/dev/ciba/requests/{request['id']}/approve", timeout=10).raise_for_status()

    def finished() -> list[dict[str, Any]] | None:
        messages = httpx.get(f"{api}/threads/{thread}/messages", headers=auth, timeout=30).json()["messages"]
        tools = [m for m in messages if m["role"] == "tool"]
        answers = [m["content"] or "" for m in messages if m["role"] == "assistant"]
        # the result is recorded first, the model's answer about it a moment later
        done = tools and tools[0]["state"] == "result" and answers and "Purchased" in answers[-1]
        return messages if done else None

    messages = wait_for(finished, 60, "the purchase to complete after the restart")
    (tool,) = [m for m in messages if m["role"] == "tool"]
    assert tool["content"] == f"Purchased {quantity} shares of MSFT at 25.0"
    assert f"Purchased {quantity} shares of MSFT" in [m for m in messages if m["role"] == "assistant"][-1]["content"]
    assert httpx.get(f"{api}/threads/{thread}/interrupts", headers=auth, timeout=10).json()["interrupts"] == []
    assert orders_in(data) == orders_before + 1
    asked = httpx.get(f"{dev}/dev/ciba/requests", params={"user": "alice"}, timeout=10).json()
    assert [r["binding_message"] for r in asked].count(f"Buy {quantity} MSFT") == 1  # asked once


def test_a_purchase_pending_across_a_stop_and_a_crash_completes_exactly_once(tmp_path: Path) -> None:
    """One purchase waits across a clean stop (SIGINT), a second across a crash of the whole process group
    (SIGKILL, nothing gets to clean up); each completes once after the next start."""
    env, data = clean_env(tmp_path), tmp_path / "data"
    proc, output, api = start_serve(env, data)
    try:
        for quantity, how, thread in ((3, "sigint", "restart-1"), (4, "sigkill", "restart-2")):
            buy_and_wait(api, thread, quantity)
            stop_serve(proc, how)
            assert not (secrets_file := data / "dev-secrets.json").stat().st_mode & 0o077
            assert secrets_file.read_text() not in output.text  # kept, never printed
            proc, output, api = start_serve(env, data)
            approve_and_see_it_bought(api, thread, quantity, data)
        stop_serve(proc, "sigint")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
