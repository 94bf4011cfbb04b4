"""Node loss on a multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), as its own process.

Threads with pending purchases live on a worker node (its host needs the `agents` resource, which only
worker nodes offer: `AGENT_HOST_RESOURCES`); that node is removed (its raylet and workers killed) after a
second worker joins, while three users' turns are running over HTTP (`tests.cluster_story`); the users
approve; the threads' host is re-created on the surviving node, reloads them and completes every purchase
by itself, once. The HTTP ingress runs too, one replica on the head and
one on the doomed node (each needs one `ingress` slot, which the head and each worker offer): after the
loss the API still answers, from the surviving nodes, with the thread's whole history. Prints one JSON
line with what it saw; the test (`tests/test_cluster_node_loss.py`) checks it. With a PostgreSQL URL as
second argument, every agent's storage is in that database (`AGENT_STORAGE_URL`) instead of SQLite files.
Run: `python tests/node_loss_scenario.py <storage dir> [<postgresql url>]`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster_story import USERS, Story  # noqa: E402
from tests.dev_services import API_AUDIENCE, CHECKOUT_AUDIENCE, services_env  # noqa: E402


def services() -> tuple[Any, Any, Any, dict[str, str]]:
    from devservers.authz_server import DevAuthorizationServer
    from devservers.checkout_api import CheckoutServer
    from devservers.offline_model import OfflineModelServer

    authz = DevAuthorizationServer(api_audience=API_AUDIENCE, default_interval=1, users=USERS).start()
    checkout = CheckoutServer(issuer=authz.issuer, audience=CHECKOUT_AUDIENCE).start()
    model = OfflineModelServer().start()
    env = {
        **services_env(authz, checkout, model),
        "CIBA_DELIVERY_MODE": "poll",
        "AGENT_HOSTS": "1",
        "AGENT_HOST_RESOURCES": json.dumps({"agents": 0.01}),
        "PYTHONPATH": str(REPO),
    }
    return authz, checkout, model, env


async def until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await probe()
        if result:
            return result
        await asyncio.sleep(0.25)
    raise TimeoutError(f"timed out waiting for {what}")


async def scenario(storage_dir: Path, storage_url: str | None = None) -> dict[str, Any]:
    from agents.chat import Chat
    from runtime import get_agent

    authz, checkout, _model, env = services()
    # the runtime actor (alarms, placement keeper) on the doomed node too: it is lost with the hosts, and the
    # hosts restart while it restarts (they must wait for it, not give up)
    env["AGENT_SCHEDULER_RESOURCES"] = json.dumps({"agents": 0.01})
    if storage_url:
        env["AGENT_STORAGE_URL"] = storage_url
    os.environ.update(env)
    cluster, doomed, api = start_cluster(storage_dir, env)
    async with httpx.AsyncClient(base_url=authz.url, timeout=10) as http:
        tokens = {u: (await http.post("/dev/login", json={"username": u})).json()["access_token"] for u in USERS}
        token = tokens["alice"]
        thread = get_agent(Chat, "t-node-loss", storage_dir=storage_dir, namespace="agents-node-loss")
        first = await thread.send_message(token, "Buy 3 shares of MSFT")
        if storage_url:
            await asyncio.to_thread(audit_writes, storage_url)
        story = Story(api, tokens)
        await story.open_and_buy()  # each user's purchase waits for approval too
        before = await thread.host.stats.remote()
        requests = await until(lambda: _pending(http, 4), timeout=60, what="the CIBA requests on the users' phones")
        stop = asyncio.Event()
        chatter = asyncio.ensure_future(story.chatter(stop))
        await until(lambda: _acknowledged(story, 6), timeout=60, what="turns running")
        survivor = cluster.add_node(num_cpus=1, resources={"agents": 1, "ingress": 1})
        cluster.wait_for_nodes()
        in_flight_at_loss = story.in_flight
        cluster.remove_node(doomed)  # the node dies while turns run: its raylet and every worker on it
        for request in requests:
            (await http.post(f"/dev/ciba/requests/{request['id']}/approve")).raise_for_status()
        orders = await orders_after_the_loss(checkout, len(requests))
        messages = await until(lambda: _final(thread, token), timeout=60, what="the final answer")
        story_seen = await finish_story(story, stop, chatter)
        await asyncio.sleep(2.0)  # an order placed twice would have reached the checkout by now
        orders = await _orders(checkout, len(requests))
        after = await thread.host.stats.remote()
        stats = (await http.get("/dev/stats")).json()
        over_http = await until(lambda: _history_over_http(api, token), timeout=60, what="the API after the loss")
    stale_writes = await asyncio.to_thread(stale_writes_accepted, storage_url) if storage_url else None
    stop_cluster(cluster)
    return {
        "host_node_before": before["node_id"],
        "host_node_after": after["node_id"],
        "doomed_node": doomed.node_id,
        "survivor_node": survivor.node_id,
        "first_turn_states": [c["state"] for m in first for c in (m.model_dump().get("tool_calls") or [])],
        "orders": orders,
        "approvals": len(requests),
        "backchannel_requests": stats["backchannel_requests"],
        "story": {**story_seen, "in_flight_at_loss": in_flight_at_loss},
        "writes_audited": stale_writes,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "http_messages": [{"role": m["role"], "content": m["content"]} for m in over_http],
    }


def start_cluster(storage_dir: Path, env: dict[str, str]) -> tuple[Any, Any, str]:
    """The head and the doomed worker node, the runtime and the HTTP API: (cluster, doomed node, API URL)."""
    import ray
    from ray.cluster_utils import Cluster

    import runtime

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "resources": {"ingress": 1}}
    )
    doomed = cluster.add_node(num_cpus=1, resources={"agents": 1, "ingress": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="agents-node-loss", runtime_env={"env_vars": env})
    runtime.init(storage_dir=storage_dir, namespace="agents-node-loss")
    api = start_ingress({**env, "AGENT_STORAGE_DIR": str(storage_dir), "AGENT_NAMESPACE": "agents-node-loss"})
    return cluster, doomed, api


async def orders_after_the_loss(checkout: Any, approvals: int) -> int:
    try:
        return await until(lambda: _orders(checkout, approvals), timeout=300, what="the orders after the loss")
    except TimeoutError:
        print_cluster_state()  # what a failure report needs: where the hosts are, and in what state
        raise


def print_cluster_state() -> None:
    """The nodes and the runtime's actors, with their state and node, to stderr (from the GCS: this
    cluster runs without a dashboard, so Ray's state API is not there)."""
    import ray
    from ray._private import state

    for node in ray.nodes():
        print(f"node {node['NodeID'][:12]} alive={node['Alive']} resources={node['Resources']}", file=sys.stderr)
    for actor in state.actors().values():
        name = actor["ActorClassName"]
        if name in ("AgentHost", "AlarmScheduler", "PlacementKeeper") or "Replica" in name:
            print(
                f"actor {name} {actor['Name']} {actor['State']} node={actor['Address']['NodeID'][:12]} "
                f"restarts={actor['NumRestarts']} pid={actor['Pid']} death={str(actor['DeathCause'])[:300]}",
                file=sys.stderr,
            )


def stop_cluster(cluster: Any) -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


async def finish_story(story: Story, stop: asyncio.Event, chatter: Any) -> dict[str, Any]:
    """A few more turns after the loss, then the users stop and the threads are checked."""
    so_far = story_acknowledged(story)
    await until(lambda: _acknowledged(story, so_far + 6), timeout=60, what="turns after the loss")
    stop.set()
    await chatter
    return await story.check()


AUDITED_TABLES = ("messages", "tool_calls")


def audit_writes(url: str) -> None:
    """Record, with every write to the threads' messages and tool calls, the writing activation's epoch
    (`agentrt.epoch`) and the thread's current one, committed in the same transaction: a write accepted
    from a stale activation would show as a row whose two differ."""
    import psycopg

    from runtime.storage_pg import class_schema

    schema = class_schema("Chat")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.write_audit (agent TEXT, writer_epoch TEXT, current_epoch BIGINT)"
        )
        conn.execute(
            """CREATE OR REPLACE FUNCTION public.audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                EXECUTE format('INSERT INTO public.write_audit SELECT agent_id, %L, epoch FROM %I._agents '
                               'WHERE agent_id = %L', current_setting('agentrt.epoch', true), TG_TABLE_SCHEMA,
                               current_setting('agentrt.agent_id', true));
                RETURN NULL;
            END $$"""
        )
        for table in AUDITED_TABLES:
            conn.execute(
                f'CREATE TRIGGER audit_write AFTER INSERT OR UPDATE ON "{schema}".{table} '
                "FOR EACH STATEMENT EXECUTE FUNCTION public.audit_write()"
            )


def stale_writes_accepted(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        total, stale = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE writer_epoch IS DISTINCT FROM current_epoch::text) "
            "FROM public.write_audit"
        ).fetchone()  # type: ignore[misc]
    return {"writes": total, "stale_accepted": stale}


def start_ingress(env: dict[str, str]) -> str:
    """The HTTP API on the head's proxy, its two replicas spread over the head and the doomed node."""
    from ray import serve

    from agentrt.ingress.app import AgentIngress
    from agentrt.stack import wait_for_http
    from devservers.server_thread import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
    options = {"num_cpus": 0, "resources": {"ingress": 1}, "runtime_env": {"env_vars": env}}
    serve.run(AgentIngress.options(num_replicas=2, ray_actor_options=options).bind(), name="agentrt", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz", timeout=120)
    return url


async def _history_over_http(api: str, token: str) -> list[dict[str, Any]] | None:
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        try:
            response = await http.get("/threads/t-node-loss/messages", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            return None
    return response.json()["messages"] if response.status_code == 200 else None


async def _pending(http: httpx.AsyncClient, count: int) -> list[dict[str, Any]] | None:
    found = (await http.get("/dev/ciba/requests", params={"status": "pending"})).json()
    return found if len(found) >= count else None


async def _orders(checkout: Any, at_least: int) -> int | None:
    async with httpx.AsyncClient(timeout=5) as http:
        count = (await http.get(f"{checkout.api_url}/stats")).json()["orders"]
    return count if count >= at_least else None


def story_acknowledged(story: Story) -> int:
    return sum(len(ids) for ids in story.acknowledged.values())


async def _acknowledged(story: Story, at_least: int) -> bool:
    return story_acknowledged(story) >= at_least


async def _final(thread: Any, token: str) -> list[Any] | None:
    messages = await thread.get_messages(token)
    done = any(m.role == "assistant" and m.content and "Purchased" in m.content for m in messages)
    return messages if done else None


if __name__ == "__main__":
    seen = asyncio.run(scenario(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
    seen["agent_files"] = sorted(str(p.relative_to(sys.argv[1])) for p in Path(sys.argv[1]).rglob("*.sqlite3"))
    print(json.dumps(seen))
