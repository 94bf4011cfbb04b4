"""Cluster benchmark: a thread's turn and approval-to-final latency when its host runs on another node than
the caller, against the same on the caller's node, in the same run.

A two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): the head (the driver: it plays the
ingress, calling threads through handles) and a worker node. Two storage roots: one whose hosts must run on
the head (`AGENT_HOST_RESOURCES` = a resource only the head offers), one whose hosts must run on the worker.
For each: `--turns` chat turns (`send_message` through the handle) and `--approvals` purchases, each
approved on the dev authorization server once pending, timed from the approval to the final answer in the
thread's file (poll mode, interval 1 s: there is no ingress here to receive pings). On one machine "another
node" is another raylet and worker process, not a network hop: the figures show the runtime's own cost of
crossing nodes.

Prints a table and writes `bench/results/cluster_bench.json`. Deadlines are taken from "now" at each wait.

    python bench/cluster_bench.py [--turns 100] [--approvals 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    answered_at,
    approve,
    log,
    machine_info,
    pending_requests,
    summarise,
    wait_until,
    write_report,
)
from bench.tables import left, print_table, right  # noqa: E402
from tests.node_loss_scenario import services  # noqa: E402

NAMESPACE = "agents-cluster-bench"


def place_hosts(resource: str) -> None:
    """The next storage root's hosts need `resource` (read when its first handle creates them)."""
    from runtime.settings import runtime_settings

    os.environ["AGENT_HOST_RESOURCES"] = json.dumps({resource: 0.001})
    runtime_settings.cache_clear()


async def measure(root: Path, token: str, authz_url: str, turns: int, approvals: int) -> dict[str, Any]:
    from agents.chat import Chat
    from runtime import get_agent

    thread = get_agent(Chat, "bench-turns", storage_dir=root, namespace=NAMESPACE)
    await thread.send_message(token, "hello")  # activation, connections: not measured
    node = (await thread.host.stats.remote())["node_id"]
    turn_times = []
    for i in range(turns):
        started = time.perf_counter()
        await thread.send_message(token, f"what is MSFT trading at? {i}")
        turn_times.append(time.perf_counter() - started)
    finals = []
    async with httpx.AsyncClient(base_url=authz_url, timeout=10) as http:
        for i in range(approvals):
            buyer = get_agent(Chat, f"bench-buy-{i}", storage_dir=root, namespace=NAMESPACE)
            await buyer.send_message(token, "Buy 1 share of MSFT")
            (request,) = await wait_until(lambda: _pending(http), 30, "the CIBA request")
            approved_at = time.time()
            await approve(http, request["id"])
            path = Chat.storage_path(root, f"bench-buy-{i}")
            done = await wait_until(lambda p=path, t=approved_at: answered_at(p, t), 60, "the final answer")
            finals.append(done - approved_at)
    return {"host_node": node, "turn": summarise(turn_times), "approval_to_final": summarise(finals)}


async def _pending(http: httpx.AsyncClient) -> list[dict[str, Any]] | None:
    """Everyone's pending CIBA requests, or None while there are none (a probe for `wait_until`)."""
    return await pending_requests(http, user=None) or None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    import runtime

    authz, _checkout, _model, env = services()
    env.pop("AGENT_HOST_RESOURCES")
    env["CIBA_DELIVERY_MODE"] = "poll"  # no ingress here to receive pings: the dev server's interval is 1 s
    os.environ.update(env)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "resources": {"head": 1}}
    )
    worker = cluster.add_node(num_cpus=1, resources={"remote": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, runtime_env={"env_vars": env})
    base = Path(tempfile.mkdtemp(prefix="agentrt-cluster-bench-"))
    async with httpx.AsyncClient(timeout=10) as http:
        token = (await http.post(f"{authz.url}/dev/login", json={"username": "alice"})).json()["access_token"]
    results: dict[str, Any] = {"machine": machine_info(), "worker_node": worker.node_id}
    try:
        for label, resource in (("same_node", "head"), ("other_node", "remote")):
            root = base / label
            place_hosts(resource)
            runtime.init(storage_dir=root, namespace=NAMESPACE)
            log(f"{label}: {args.turns} turns, {args.approvals} approvals ...")
            results[label] = await measure(root, token, authz.url, args.turns, args.approvals)
    finally:
        ray.shutdown()
        cluster.shutdown()
    same, other = results["same_node"], results["other_node"]
    results["ratios"] = {
        "turn_p50": round(other["turn"]["p50_ms"] / same["turn"]["p50_ms"], 2),
        "approval_to_final_p50": round(other["approval_to_final"]["p50_ms"] / same["approval_to_final"]["p50_ms"], 2),
    }
    return results


def print_report(results: dict[str, Any]) -> None:
    """Turn and approval -> final answer on the caller's node and on the other, then their ratios and where
    the hosts ran (so that a misplaced host shows)."""
    rows = []
    for label in ("same_node", "other_node"):
        for what in ("turn", "approval_to_final"):
            s = results[label][what]
            rows.append([f"{label} {what}", str(s["n"]), str(s["p50_ms"]), str(s["p99_ms"])])
    columns = (left("measurement"), right("n"), right("p50 ms"), right("p99 ms"))
    print_table(f"agentrt cluster benchmark ({results['machine']['cpu_count']} CPUs)", columns, rows, width=120)
    print(f"ratios other/same node (p50): {results['ratios']}")
    nodes = {label: results[label]["host_node"][:8] for label in ("same_node", "other_node")}
    print(f"hosts on nodes {nodes} (the worker node is {results['worker_node'][:8]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--approvals", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster_bench.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print_report(results)
    write_report(args.out, results)


if __name__ == "__main__":
    main()
