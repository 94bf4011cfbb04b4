"""`agentrt status`: read from the files of a storage root, waking nothing, it shows a pending approval, a
sleeping thread with a due alarm, and a schedule parked after failing every retry, each as it is."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import get_agent
from runtime.settings import runtime_settings
from tests.agents_under_test import Counter, QuickCounter
from tests.chat_agents_under_test import HibernatingChat
from tests.chat_world import ChatWorld
from tests.lifecycle import live_agent_names, wait_until_hibernated
from tests.test_chat_flow import new_thread_id, wait_for_requests
from tests.waiting import eventually

pytestmark = [pytest.mark.usefixtures("chat_world"), pytest.mark.slow]


def agentrt_status(storage_dir: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "agentrt.cli", "status", "--storage-dir", str(storage_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def test_status_shows_waiting_approvals_sleeping_alarms_and_parked_schedules(
    chat_world: ChatWorld, storage_dir: Path
) -> None:
    carol = chat_world.token("carol")
    thread_id = new_thread_id()
    namespace = runtime_settings().namespace
    sent_at = time.time()
    chat = get_agent(HibernatingChat, thread_id, storage_dir=storage_dir)
    await chat.send_message(carol, "Buy 2 shares of NVDA")
    (request,) = await wait_for_requests(chat_world, "carol", 1)
    await wait_until_hibernated(storage_dir, namespace, f"HibernatingChat/{thread_id}", timeout=30)

    failing = get_agent(Counter, "parks-a-schedule", storage_dir=storage_dir)
    await failing.schedule(0.05, "always_fails", {"why": "test"})
    await eventually(lambda: _parked(failing), timeout=30, what="the failing schedule to be parked after its retries")
    asleep = get_agent(QuickCounter, "asleep-without-alarm", storage_dir=storage_dir)
    await asleep.put("x", 1)  # nothing due: only a call could wake it
    await wait_until_hibernated(storage_dir, namespace, "QuickCounter/asleep-without-alarm", timeout=30)

    async def report_with_the_thread_asleep() -> dict | None:
        """The thread's approval check wakes it every second (its alarm, not status): read until asleep."""
        found = await asyncio.to_thread(agentrt_status, storage_dir)
        return found if any(a["agent_id"] == thread_id for a in found["sleeping_with_due_alarm"]) else None

    try:
        report = await eventually(report_with_the_thread_asleep, timeout=60, what="a report with the thread asleep")
    finally:
        chat_world.decide(request["id"], approve=False)

    (waiting,) = report["pending_approvals"]["calls"]
    assert waiting["thread"] == {"class_name": "HibernatingChat", "agent_id": thread_id}
    assert waiting["tool_name"] == "buy_stock" and waiting["state"] == "pending-authorization"
    assert report["pending_approvals"]["count"] == 1
    assert sent_at <= report["pending_approvals"]["oldest_since"] <= time.time()
    (sleeping,) = [a for a in report["sleeping_with_due_alarm"] if a["agent_id"] == thread_id]
    assert sleeping["class_path"].endswith(":HibernatingChat") and sleeping["live"] is False
    assert sleeping["next_due"] > sent_at  # its next CIBA check
    (parked,) = report["parked_schedules"]
    assert parked["agent"] == {"class_name": "Counter", "agent_id": "parks-a-schedule"}
    assert parked["callback"] == "always_fails" and parked["attempts"] == Counter.schedule_max_retries + 1
    assert "callback failure" in (parked["last_error"] or "")
    assert {"class_name": "Counter", "agent_id": "parks-a-schedule"} in report["live_agents"]
    assert report["agents_on_file"] == 3  # the thread and the two counters (the credential store is no agent)
    assert "a scan that opens each of the 3" in report["read_from"]  # on SQLite it says what it costs
    assert {"class_name": "HibernatingChat", "agent_id": thread_id} not in report["live_agents"]
    assert "QuickCounter/asleep-without-alarm" not in await live_agent_names(storage_dir, namespace), (
        "status must wake no agent"
    )


async def _parked(agent: object) -> bool:
    return bool(await agent.get_schedules(status="failed"))  # type: ignore[attr-defined]
