"""A host that starts while the root's placement keeper is itself restarting (a node lost with both on it)
waits for the keeper instead of giving up: found by the node-loss test, where a host that restarted a
moment before the keeper refused every later call with the keeper's old "restarting" error.

Which of the two Ray restarts first cannot be chosen from outside, so this test stands in for the keeper:
the one mock of the suite's runtime tests, of `fetch_placement`, failing as Ray fails a call to an actor
that is restarting. `tests/test_cluster_node_loss.py` runs the real loss with the keeper on the lost node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import ActorUnavailableError

import runtime.host as host_module
from runtime.placement import Placement


async def test_a_starting_host_waits_for_a_restarting_keeper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    answers: list[Any] = [ActorUnavailableError("The actor is restarting.", None)] * 3 + [Placement(4, 2)]
    asked = 0

    async def fetch_placement(storage_dir: Path, namespace: str) -> Placement:
        nonlocal asked
        answer = answers[asked]
        asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(host_module, "fetch_placement", fetch_placement)
    monkeypatch.setattr(host_module, "KEEPER_RETRY_FIRST_SECONDS", 0.01)
    host = SimpleNamespace(storage_dir=tmp_path, namespace="ns", slot=0)
    wait = host_module.AgentHost.__ray_metadata__.modified_class._placement_once_reachable(host)
    placement = await asyncio.wait_for(wait, timeout=10)
    assert (placement.version, placement.hosts) == (4, 2) and asked == 4
