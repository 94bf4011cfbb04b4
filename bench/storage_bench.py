"""Storage benchmark: the two backends in the same run, SQLite files (the embedded default) and a real
PostgreSQL (the clusters' store; started here with `fsync=on`, on this machine's disk).

1. Storage calls in one process, no Ray (alternating rounds): a fenced `put` (one write transaction), a
   `get`, and a transaction of 5 inserts into an agent table; p50/p99 per backend.
2. A chat turn over HTTP ("hello" to the offline model; its messages persisted): the whole stack started
   once per backend, the same turns on each, p50/p99 and the PostgreSQL/SQLite ratio (target <= 1.2x).
3. `agentrt status`'s agent-wide reads (agents on file, waiting tool calls, parked schedules): on
   PostgreSQL with `--pg-agents` threads in the database (100,000 by default, written in bulk), on SQLite
   with `--sqlite-agents` files (it scans files: the per-file cost times 100,000 is its estimate).

Prints a table and writes `bench/results/storage_bench.json`.

    python bench/storage_bench.py [--calls 2000] [--turns 100] [--pg-agents 100000] [--sqlite-agents 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    alternating_rounds,
    local_stack,
    log,
    ratio,
    report_head,
    running,
    summarise,
    timed,
    write_report,
)
from bench.tables import LATENCY_COLUMNS, latency_row, note_row, print_table  # noqa: E402

EVENTS = ["CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, value INTEGER NOT NULL, at REAL NOT NULL)"]


async def storage_calls(url: str, root: Path, calls: int) -> dict[str, dict[str, Any]]:
    from runtime.pg_pool import close_pools
    from runtime.storage import AgentStorage
    from runtime.storage_pg import PostgresAgentStorage

    backends = {
        "sqlite": AgentStorage(root / "Bench" / "bench-0.sqlite3"),
        "postgres": PostgresAgentStorage(url, "Bench", "bench-0"),
    }
    variants = {}
    for name, storage in backends.items():
        await storage.open()
        await storage.migrate("Bench", EVENTS)
        await storage.take_epoch()
        await storage.put("k", {"value": 0})

        async def put(storage: Any = storage) -> None:
            await storage.put("k", {"value": time.time()})

        async def get(storage: Any = storage) -> None:
            await storage.get("k")

        async def insert_five(storage: Any = storage) -> None:
            async with storage.transaction() as tx:
                for value in range(5):
                    await tx.execute("INSERT INTO events(value, at) VALUES (?, ?)", (value, time.time()))

        variants.update({f"{name} put": put, f"{name} get": get, f"{name} 5 inserts": insert_five})
    samples = await alternating_rounds(variants, calls, rounds=10)
    for storage in backends.values():
        await storage.close()
    await close_pools()
    return {name: summarise(values) for name, values in samples.items()}


async def turns_over_http(api: str, authz: str, turns: int) -> list[float]:
    async with httpx.AsyncClient(base_url=authz, timeout=30) as http:
        token = (await http.post("/dev/login", json={"username": "alice"})).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, timeout=60, headers=headers) as http:
        for i in range(4):
            await timed(http, "POST", "/threads", {"thread_id": f"bench-{i}"})
        await timed(http, "POST", "/threads/bench-0/messages", {"content": "hello"})  # warm-up
        return [
            await timed(http, "POST", f"/threads/bench-{i % 4}/messages", {"content": "hello"}) for i in range(turns)
        ]


def chat_turns(url: str, turns: int) -> dict[str, list[float]]:
    out = {}
    limits = {"AGENTRT_MAX_TURNS_PER_MINUTE": "100000"}  # one user sends every turn: no abuse limit here
    for backend, env in (("sqlite", limits), ("postgres", {**limits, "AGENT_STORAGE_URL": url})):
        root = Path(tempfile.mkdtemp(prefix=f"storage-bench-{backend}-"))
        os.environ.pop("AGENT_STORAGE_URL", None)
        with running(local_stack(root, f"bench-{backend}", 1, env), remove=root) as stack:
            log(f"{backend}: {turns} turns over HTTP")
            out[backend] = asyncio.run(turns_over_http(stack.urls.api, stack.urls.authz, turns))
        os.environ.pop("AGENT_STORAGE_URL", None)
    return out


def status_on_postgres(server: Any, agents: int) -> float:
    """Seconds of the agent-wide status reads with `agents` threads in the database (1% waiting)."""
    import psycopg

    from agents.status import waiting_tool_calls
    from agents.thread_store import CHAT_MIGRATIONS
    from runtime.pg_pool import close_pools
    from runtime.schedules import SCHEDULES_MIGRATIONS
    from runtime.settings import runtime_settings
    from runtime.status import agents_on_file, parked_schedules
    from runtime.storage_pg import PostgresAgentStorage, class_schema

    async def make_tables() -> None:
        storage = await PostgresAgentStorage(server.url, "StatusBench", "seed").open()
        await storage.migrate("Chat", CHAT_MIGRATIONS)
        await storage.migrate("runtime.Agent", SCHEDULES_MIGRATIONS)
        await close_pools()

    asyncio.run(make_tables())
    schema = class_schema("StatusBench")
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/agentrt") as conn:  # bulk, as superuser
        conn.execute(f"INSERT INTO {schema}._agents (agent_id, epoch, created_at) SELECT 't-' || g, 1, 0 "
                     f"FROM generate_series(1, {agents}) g")  # fmt: skip
        conn.execute(
            f"INSERT INTO {schema}.messages (_agentrt_agent, id, role, content, created_at) "
            f"SELECT 't-' || g, 'm', 'assistant', 'x', 0 FROM generate_series(1, {agents}) g"
        )
        conn.execute(
            f"INSERT INTO {schema}.tool_calls (_agentrt_agent, id, message_id, position, name, arguments, state, "
            f"created_at, updated_at) SELECT 't-' || g, 'c', 'm', 0, 'buy_stock', '{{}}', "
            f"CASE WHEN g % 100 = 0 THEN 'pending-authorization' ELSE 'result' END, 0, 0 "
            f"FROM generate_series(1, {agents}) g"
        )
        conn.execute(f"ANALYZE {schema}.tool_calls")
    os.environ["AGENT_STORAGE_URL"] = server.url
    runtime_settings.cache_clear()
    try:
        started = time.perf_counter()
        counted, waiting = agents_on_file(Path(".")), waiting_tool_calls(Path("."))
        parked_schedules(Path("."))
        seconds = time.perf_counter() - started
    finally:
        os.environ.pop("AGENT_STORAGE_URL")
        runtime_settings.cache_clear()
    assert counted >= agents and len(waiting) == agents // 100, (counted, len(waiting))
    return seconds


def status_on_sqlite(agents: int) -> float:
    """Seconds of the same reads over `agents` thread files (copies of one real thread file)."""
    from agents.status import waiting_tool_calls
    from agents.thread_store import CHAT_MIGRATIONS, ThreadStore
    from runtime.status import agents_on_file, parked_schedules
    from runtime.storage import AgentStorage

    root = Path(tempfile.mkdtemp(prefix="storage-bench-status-"))
    template = root / "Chat" / "t-0.sqlite3"

    async def make_template() -> None:
        storage = await AgentStorage(template).open()
        await storage.migrate("Chat", CHAT_MIGRATIONS)
        await ThreadStore(storage).add_assistant("x", [{"id": "c", "name": "buy_stock", "arguments": "{}"}])
        await storage.close()

    asyncio.run(make_template())
    for i in range(1, agents):
        shutil.copyfile(template, root / "Chat" / f"t-{i}.sqlite3")
    try:
        started = time.perf_counter()
        agents_on_file(root), waiting_tool_calls(root), parked_schedules(root)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--pg-agents", type=int, default=100_000)
    parser.add_argument("--sqlite-agents", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "storage_bench.json")
    args = parser.parse_args()

    from tests.postgres import postgres_server

    report: dict[str, Any] = report_head("storage_bench", utc_timestamp=True)
    with postgres_server(fsync=True) as server:
        root = Path(tempfile.mkdtemp(prefix="storage-bench-"))
        log(f"storage calls: {args.calls} of each, alternating rounds")
        report["storage_calls"] = asyncio.run(storage_calls(server.url, root, args.calls))
        shutil.rmtree(root, ignore_errors=True)
        turns = chat_turns(server.url, args.turns)
        report["chat_turn"] = {name: summarise(values) for name, values in turns.items()}
        log(f"status reads: {args.pg_agents} threads in PostgreSQL, {args.sqlite_agents} SQLite files")
        report["status_seconds"] = {
            "postgres": round(status_on_postgres(server, args.pg_agents), 3),
            "postgres_agents": args.pg_agents,
            "sqlite": round(status_on_sqlite(args.sqlite_agents), 3),
            "sqlite_agents": args.sqlite_agents,
        }
    status = report["status_seconds"]
    status["sqlite_estimate_at_100000"] = round(status["sqlite"] / args.sqlite_agents * 100_000, 1)
    turn = report["chat_turn"]
    report["turn_ratio_p50"] = ratio(turn["postgres"]["p50_ms"], turn["sqlite"]["p50_ms"])
    rows = [latency_row(name, summary) for name, summary in report["storage_calls"].items()]
    rows += [latency_row(f"chat turn, {name}", summary) for name, summary in turn.items()]
    rows.append(note_row("turn p50 postgres / sqlite", "", f"{report['turn_ratio_p50']}x (target <= 1.2x)"))
    rows.append(note_row("status, postgres", str(status["postgres_agents"]), f"{status['postgres']} s"))
    rows.append(
        note_row(
            "status, sqlite",
            str(status["sqlite_agents"]),
            f"{status['sqlite']} s (at 100,000: about {status['sqlite_estimate_at_100000']} s)",
        )
    )
    print_table("storage backends, same run", LATENCY_COLUMNS, rows, width=140)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
