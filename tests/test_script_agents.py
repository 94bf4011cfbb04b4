"""Review: an agent class defined in a script (`__main__`, or here inside a function: no other process
can import it by path either) fires its alarms while asleep, its alarm is parked and shown when its class
cannot be loaded (after the scheduler restarted), and runs once the script registers its class again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from runtime import Agent, get_agent, public
from runtime.placement import scheduler_name
from runtime.settings import runtime_settings
from runtime.status import due_alarms
from tests.lifecycle import wait_until_hibernated
from tests.test_runtime_hibernation import stored_value
from tests.waiting import eventually


def scheduler_of(storage_dir: Path, namespace: str) -> Any:
    return ray.get_actor(scheduler_name(storage_dir.resolve()), namespace=namespace)


async def test_a_script_defined_agent_fires_its_alarms_asleep_and_is_parked_not_retried_without_its_class(
    storage_dir: Path,
) -> None:
    class Pinger(Agent):
        idle_seconds = 0.3

        @public
        async def arm(self, seconds: float) -> None:
            await self.schedule(seconds, "ping")

        async def ping(self, payload: Any) -> None:
            await self.storage.put("pings", (await self.storage.get("pings") or 0) + 1)

    namespace = runtime_settings().namespace
    path = Pinger.storage_path(storage_dir, "p-1")
    agent = get_agent(Pinger, "p-1", storage_dir=storage_dir)
    await agent.arm(2.0)
    await wait_until_hibernated(storage_dir, namespace, "Pinger/p-1", timeout=30)
    await eventually(lambda: stored_value(path, "pings") == 1, timeout=30, what="the alarm, fired while asleep")

    # a restarted scheduler has forgotten the class: the alarm is parked with its reason, and shown
    await agent.arm(2.0)
    await wait_until_hibernated(storage_dir, namespace, "Pinger/p-1", timeout=30)
    ray.kill(scheduler_of(storage_dir, namespace), no_restart=False)

    def parked() -> list[Any]:
        return [a for a in due_alarms(storage_dir) if a.parked_error and a.agent_id == "p-1"]

    (alarm,) = await eventually(parked, timeout=30, what="the alarm parked")
    assert "run the script again" in (alarm.parked_error or "")
    assert stored_value(path, "pings") == 1

    get_agent(Pinger, "p-1", storage_dir=storage_dir)  # the script runs again: its class is registered
    await eventually(lambda: stored_value(path, "pings") == 2, timeout=30, what="the parked alarm, fired")
    assert not parked()
