"""A node dies under threads with pending purchases while three users' turns run over HTTP: the threads are
re-created on a surviving node and every purchase completes by itself, exactly once (orders == approvals
== CIBA requests), every acknowledged message is stored once, no tool call is left unfinished, and the
only 5xx a user sees is a 503 with `Retry-After`; the HTTP API, one of whose replicas was on that node,
answers from the surviving ones.

The cluster is a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), in a process of
its own (`tests/node_loss_scenario.py`), so this session's Ray stays as it is; on a real PostgreSQL (the
clusters' store) and, when asked (`BACKENDS`), SQLite files in a shared folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.slow


BACKENDS = os.environ.get("AGENTRT_NODE_LOSS_BACKENDS", "postgres").split(",")
"""The suite runs the clusters' store (PostgreSQL); `AGENTRT_NODE_LOSS_BACKENDS=sqlite,postgres` adds SQLite
files in a shared folder (about 50 s more on 2 cores)."""


@pytest.mark.timeout(640)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pending_purchase_survives_the_loss_of_its_threads_node(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = []
    if backend == "postgres":  # a database of its own: the scenario audits every write to it
        url = [request.getfixturevalue("postgres").new_database(f"node_loss_{os.getpid()}_{time.monotonic_ns()}")]
    proc = run_isolated("tests/node_loss_scenario.py", str(tmp_path / "agents"), *url, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-8000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["host_node_before"] == seen["doomed_node"], "the thread must first live on the doomed node"
    assert seen["host_node_after"] == seen["survivor_node"], "and then on the surviving one"
    assert seen["first_turn_states"] == ["pending-authorization"]
    assert seen["orders"] == seen["approvals"] == seen["backchannel_requests"] == 4  # each purchase once
    story = seen["story"]
    assert story["acknowledged"] >= 12 and story["in_flight_at_loss"] >= 1, story  # turns ran through the loss
    assert story["stored_twice"] == [] and story["acknowledged_but_missing"] == [], story
    assert story["unfinished_tool_calls"] == [], story
    assert story["undocumented_5xx"] == [], story  # a 5xx is only ever a 503 with Retry-After
    roles = [m["role"] for m in seen["messages"]]
    assert roles[0] == "user" and seen["messages"][0]["content"] == "Buy 3 shares of MSFT"
    assert roles.count("user") == 1 and "Purchased 3 shares of MSFT" in seen["messages"][-1]["content"]
    assert seen["http_messages"] == seen["messages"], "the API must answer from the surviving nodes, whole"
    if backend == "postgres":  # zero writes accepted from a stale activation (audited in the database)
        assert seen["writes_audited"]["writes"] > 0 and seen["writes_audited"]["stale_accepted"] == 0, seen
    if backend == "postgres":  # every agent's data in the database: no agent file, no credential file
        assert [f for f in seen["agent_files"] if not f.startswith("_runtime/")] == []
