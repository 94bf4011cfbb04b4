"""Review: one storage root per process. A script that calls `runtime.init(storage_dir=...)` and then
`get_agent(Counter, "c-1")` (as the README shows, without `storage_dir=`) keeps its agent's file and its
alarms in that folder, never in the default `./.data` that a running server may be using."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.isolated import REPO, SESSION_ONLY

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys, time
import runtime
from runtime import Agent, get_agent_sync, public
from runtime.status import due_alarms


class Counter(Agent):
    @public
    async def add(self, value: int) -> int:
        total = (await self.storage.get("total") or 0) + value
        await self.storage.put("total", total)
        await self.schedule(3600, "remind", {"value": value})
        return total

    async def remind(self, payload: dict) -> None: ...


runtime.init(storage_dir=sys.argv[1], num_cpus=1, include_dashboard=False)
counter = get_agent_sync(Counter, "c-1")
total = counter.add(5)
deadline = time.monotonic() + 60
while not (alarms := [a.agent_id for a in due_alarms(sys.argv[1])]) and time.monotonic() < deadline:
    time.sleep(0.2)  # the agent reports its next due time to the root's scheduler just after the turn
print(json.dumps({"total": total, "alarms": alarms}))
"""


def test_a_script_keeps_its_agents_and_alarms_in_the_root_it_gave_runtime_init(tmp_path: Path) -> None:
    root = tmp_path / "my-agents"
    script = tmp_path / "counter_script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SESSION_ONLY)}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(script), str(root)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"total": 5, "alarms": ["c-1"]}  # the alarm is in the index of the root it chose
    assert Path(root / "Counter" / "c-1.sqlite3").is_file()
    assert not (tmp_path / ".data").exists()  # nothing went to the default folder
