"""Where the agent hosts land on a multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a
head without cores and two worker nodes of two cores), as its own process. With four hosts of one core each
(`AGENT_HOST_CPUS=1`), the runtime starts them over both workers (each reserves its core; the SPREAD
strategy), and agents answer from more than one host process. Prints one JSON line for
`tests/test_cluster_placement.py`. Run: `python tests/placement_scenario.py <storage dir>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAMESPACE = "agents-placement"


async def scenario(storage_dir: Path) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    import runtime
    from runtime import get_agent
    from tests.agents_under_test import Counter

    env = {"PYTHONPATH": str(REPO), "AGENT_HOSTS": "4", "AGENT_HOST_CPUS": "1"}
    os.environ.update(env)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):  # two cores each: four hosts of one core each cannot all fit on one node
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, runtime_env={"env_vars": env})
    try:
        runtime.init(storage_dir=storage_dir, namespace=NAMESPACE, start_hosts=True)
        from tests.lifecycle import host_stats

        stats = await host_stats(storage_dir, NAMESPACE)
        counters = [get_agent(Counter, f"spread-{i}", storage_dir=storage_dir, namespace=NAMESPACE) for i in range(12)]
        answers = [(await counter.whoami())["pid"] for counter in counters]
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        reserved = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
        return {
            "nodes": len(nodes),
            "host_nodes": sorted({s["node_id"] for s in stats}),
            "hosts": len(stats),
            "cpus_reserved": reserved,
            "agent_processes": len(set(answers)),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scenario(Path(sys.argv[1])))))
