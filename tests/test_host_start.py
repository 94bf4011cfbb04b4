"""A host that starts while the root's placement keeper is itself restarting (a node lost with both on it)
waits for the keeper instead of giving up: found by the node-loss test, where a host that restarted a
moment before the keeper refused every later call with the keeper's old "restarting" error.

Which of the two Ray restarts first cannot be chosen from outside, so this test stands in for the keeper:
a stand-in for `fetch_placement` (the function a host starts with), failing as Ray fails a call to an actor
that is restarting. `tests/test_cluster_node_loss.py` runs the real loss with the keeper on the lost node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ray.exceptions import ActorUnavailableError

from runtime.placement import Placement
from runtime.placement_view import placement_once_reachable


async def test_a_starting_host_waits_for_a_restarting_keeper(tmp_path: Path) -> None:
    answers: list[Any] = [ActorUnavailableError("The actor is restarting.", None)] * 3 + [Placement(4, 2)]
    asked = 0

    async def fetch_placement(storage_dir: Path, namespace: str) -> Placement:
        nonlocal asked
        answer = answers[asked]
        asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    wait = placement_once_reachable(tmp_path, "ns", 0, fetch=fetch_placement, first=0.01)
    placement = await asyncio.wait_for(wait, timeout=10)
    assert (placement.version, placement.hosts) == (4, 2) and asked == 4
