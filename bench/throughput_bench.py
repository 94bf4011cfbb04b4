"""Throughput benchmark (issue 23): turns per second and CPU per turn, for short and for long threads.

Starts the whole stack locally (Ray, the Serve ingress serving `bench.long_thread_agent.LongThreadChat`,
the dev authorization server, the checkout API, the offline model), then runs, one after the other:

1. `bare model`: C clients calling the offline model straight through the openai SDK (a streamed
   completion each), for D s: the floor of a turn's model call at the same concurrency;
2. `serve echo`: C clients on a trivial Serve endpoint on the same proxy: what the proxy and a replica
   cost per request by themselves (the floor of the ingress's share);
3. `short threads`: C users posting "hello" over HTTP for D s, each to a new thread every 5 turns (the
   thread's creation included);
4. `long threads`: C users posting "hello" to their own thread, each given L messages of history first.

For each: turns/s, p50 and p99, and the CPU each group of processes spent per turn, read from /proc before
and after (agent hosts, the ingress replica, Serve's proxy, other Ray workers, Ray's own daemons, and this
driver, which runs the dev servers, the offline model and the load's clients). `--profile` samples the
agent hosts with py-spy during the thread phases and prints the top frames.

Prints a table and writes `bench/results/throughput_bench.json`; deadlines are taken from "now". The suite
runs a short version (`tests/test_throughput_bench.py`), which asserts nothing about time.

    python bench/throughput_bench.py [--users 8] [--seconds 30] [--history 1000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import local_stack, log, report_head, running, summarise, write_report  # noqa: E402
from bench.tables import left, print_table, right  # noqa: E402

NAMESPACE = "agents-throughput-bench"
GROUPS = ("hosts", "replica", "proxy", "ray workers", "ray daemons", "driver")
"""The process groups CPU is read for (see `group_of`)."""


def group_of(cmdline: bytes, pid: int) -> str | None:
    """Which group a process belongs to, from its command line (Ray names its workers `ray::<Actor>`)."""
    if pid == os.getpid():
        return "driver"
    if cmdline.startswith(b"ray::AgentHost"):
        return "hosts"
    if cmdline.startswith(b"ray::ServeReplica"):
        return "replica"
    if cmdline.startswith(b"ray::ProxyActor"):
        return "proxy"
    if cmdline.startswith(b"ray::"):
        return "ray workers"
    if any(name in cmdline for name in (b"raylet", b"gcs_server", b"dashboard", b"log_monitor", b"ray/_private")):
        return "ray daemons"
    return None


def cpu_by_group() -> tuple[Counter[str], dict[str, list[int]]]:
    """CPU seconds (user + system) each group's processes have used so far, and their pids."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: Counter[str] = Counter()
    pids: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            group = group_of((proc / "cmdline").read_bytes(), int(proc.name))
            if group is None:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[group] += (int(fields[11]) + int(fields[12])) / ticks
        pids.setdefault(group, []).append(int(proc.name))
    return seconds, pids


class Phase:
    """One load: its turn latencies, and the CPU the groups used while it ran."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.errors = 0

    async def run(self, users: int, seconds: float, one_user: Any, *, profile: bool = False) -> dict[str, Any]:
        """`users` running `one_user` for `seconds` from now; with `profile`, py-spy on the hosts meanwhile."""
        before, _ = cpu_by_group()
        started = time.monotonic()
        end = started + seconds
        profiler = asyncio.create_task(asyncio.to_thread(profile_hosts, seconds)) if profile else None
        await asyncio.gather(*(one_user(i, end, self) for i in range(users)))
        wall = time.monotonic() - started
        after, _ = cpu_by_group()
        turns = len(self.latencies)
        cpu = {group: after[group] - before[group] for group in GROUPS}
        return ({"profile": await profiler} if profiler is not None else {}) | {
            "phase": self.name,
            "turns": turns,
            "errors": self.errors,
            "turns_per_s": round(turns / wall, 1),
            "latency": summarise(self.latencies),
            "cpu_ms_per_turn": {g: round(1000 * s / max(turns, 1), 1) for g, s in cpu.items()},
            "cpu_ms_per_turn_total": round(1000 * sum(cpu.values()) / max(turns, 1), 1),
        }

    async def timed(self, work: Any) -> None:
        started = time.perf_counter()
        try:
            await work
        except (httpx.HTTPError, RuntimeError):
            self.errors += 1
            return
        self.latencies.append(time.perf_counter() - started)


async def post_turn(http: httpx.AsyncClient, thread: str) -> None:
    response = await http.post(f"/threads/{thread}/messages", json={"content": "hello"})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


async def bare_model(stack: Any, users: int, seconds: float) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=stack.model.base_url, api_key="offline")
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hello"}]

    async def call() -> None:
        stream = await client.chat.completions.create(model=stack.model.model, messages=messages, stream=True)
        async for _ in stream:
            pass

    async def user(_: int, end: float, phase: Phase) -> None:
        while time.monotonic() < end:
            await phase.timed(call())

    try:
        return await Phase("bare model").run(users, seconds, user)
    finally:
        await client.close()


async def serve_echo(api: str, users: int, seconds: float) -> dict[str, Any]:
    """A trivial Serve endpoint on the same proxy (`bench.http_bench.echo_app`): what the proxy and a replica
    cost per request by themselves, the floor of the ingress's share of a turn."""
    from ray import serve

    from bench.http_bench import echo_app

    await asyncio.to_thread(serve.run, echo_app(), name="echo", route_prefix="/echo", blocking=False)

    async def user(_: int, end: float, phase: Phase) -> None:
        async with httpx.AsyncClient(base_url=api, timeout=60) as http:
            while time.monotonic() < end:
                await phase.timed(get_ok(http, "/echo/"))

    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        await wait_ok(http, "/echo/")
    return await Phase("serve echo").run(users, seconds, user)


async def get_ok(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


async def wait_ok(http: httpx.AsyncClient, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await get_ok(http, path)
        except (httpx.HTTPError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def short_threads(api: str, tokens: list[str], seconds: float, run_id: str, profile: bool) -> dict[str, Any]:
    async def user(index: int, end: float, phase: Phase) -> None:
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=120) as http:
            n = 0
            while time.monotonic() < end:
                thread = f"short-{run_id}-{index}-{n // 5}"
                if n % 5 == 0:
                    await phase.timed(create_then_turn(http, thread))
                else:
                    await phase.timed(post_turn(http, thread))
                n += 1

    return await Phase("short threads").run(len(tokens), seconds, user, profile=profile)


async def create_then_turn(http: httpx.AsyncClient, thread: str) -> None:
    response = await http.post("/threads", json={"thread_id": thread})
    if response.status_code not in (200, 201):
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    await post_turn(http, thread)


async def long_threads(
    api: str, tokens: list[str], seconds: float, threads: list[str], profile: bool
) -> dict[str, Any]:
    async def user(index: int, end: float, phase: Phase) -> None:
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=120) as http:
            while time.monotonic() < end:
                await phase.timed(post_turn(http, threads[index]))

    return await Phase("long threads").run(len(tokens), seconds, user, profile=profile)


async def give_history(api: str, tokens: list[str], history: int, run_id: str, storage: Path) -> list[str]:
    """One thread per user, each created over HTTP and given `history` messages through its storage."""
    import runtime
    from bench.long_thread_agent import LongThreadChat

    threads = []
    for index, token in enumerate(tokens):
        thread = f"long-{run_id}-{index}"
        async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            await create_then_turn(http, thread)
        handle = runtime.get_agent(LongThreadChat, thread, storage_dir=storage, namespace=NAMESPACE, create=False)
        await handle.write_history(max(1, history // 2))
        threads.append(thread)
    return threads


def profile_hosts(seconds: float) -> dict[str, list[dict[str, Any]]]:
    """py-spy on every agent host for `seconds` (sampling the GIL's holder): the 40 frames found in most
    samples (inclusive: a frame counts for everything it called) and the 25 that were running most (self)."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        log("   (--profile: py-spy is not installed; pip install py-spy)")
        return {}
    _, pids = cpu_by_group()
    frames: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with tempfile.TemporaryDirectory() as out:
        runs = []
        for pid in pids.get("hosts", []):
            path = Path(out) / f"{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw"]
            command += ["--gil", "--nonblocking", "--rate", "50"]  # the GIL's holder: the event loop's work
            runs.append(
                (
                    subprocess.Popen([*command, "-o", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    path,
                )
            )
        for proc, path in runs:
            proc.wait(timeout=seconds + 60)
            for line in path.read_text().splitlines() if path.exists() else []:
                stack, _, count = line.rpartition(" ")
                if stack and count.isdigit():
                    total += int(count)
                    for frame in set(stack.split(";")):
                        frames[frame] += int(count)
                    own[stack.split(";")[-1]] += int(count)
    share = max(total, 1)
    return {
        "inclusive": [{"frame": f, "share": round(n / share, 3)} for f, n in frames.most_common(40)],
        "self": [{"frame": f, "share": round(n / share, 3)} for f, n in own.most_common(25)],
    }


def print_report(report: dict[str, Any]) -> None:
    columns = [left("phase"), right("turns/s"), right("p50 ms"), right("p99 ms"), right("CPU ms/turn")]
    columns += [right(group) for group in GROUPS]
    rows = []
    for phase in report["phases"]:
        cpu = phase["cpu_ms_per_turn"]
        rows.append(
            [
                phase["phase"],
                str(phase["turns_per_s"]),
                str(phase["latency"]["p50_ms"]),
                str(phase["latency"]["p99_ms"]),
                str(phase["cpu_ms_per_turn_total"]),
            ]
            + [str(cpu[group]) for group in GROUPS]
        )
    print_table(
        f"throughput: {report['config']['users']} users, {report['config']['seconds']} s a phase",
        columns,
        rows,
        width=160,
    )
    for phase in report["phases"]:
        if phase.get("errors"):
            print(f"{phase['phase']}: {phase['errors']} failed turns")
        for kind, frames in (phase.get("profile") or {}).items():
            print(f"{phase['phase']}, the hosts' busiest frames ({kind}):")
            for frame in frames:
                print(f"  {frame['share']:6.1%}  {frame['frame']}")


async def run(args: argparse.Namespace, stack: Any, storage: Path) -> dict[str, Any]:
    from bench.waiting_bench import log_in

    users = [f"tp{i}" for i in range(args.users)]
    tokens = await asyncio.to_thread(log_in, stack.authz.url, users)
    run_id = os.urandom(3).hex()
    log(f"giving {args.users} threads {args.history} messages each ...")
    threads = await give_history(stack.urls.api, tokens, args.history, run_id, storage)
    phases = []
    log("bare model ...")
    phases.append(await bare_model(stack, args.users, args.seconds))
    log("serve echo ...")
    phases.append(await serve_echo(stack.urls.api, args.users, args.seconds))
    log("short threads ...")
    phases.append(await short_threads(stack.urls.api, tokens, args.seconds, run_id, args.profile))
    log("long threads ...")
    phases.append(await long_threads(stack.urls.api, tokens, args.seconds, threads, args.profile))
    report = report_head("throughput_bench")
    report.update({"config": vars(args) | {"out": str(args.out)}, "phases": phases})
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--history", type=int, default=2000, help="messages of history of each long thread")
    parser.add_argument("--profile", action="store_true", help="py-spy the agent hosts in the thread phases")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "throughput_bench.json")
    args = parser.parse_args()
    storage = Path(tempfile.mkdtemp(prefix="agentrt-throughput-"))
    env = {
        "AGENTRT_AGENT_CLASS": "bench.long_thread_agent:LongThreadChat",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "AGENT_MAX_THREADS_PER_USER": "100000",
        "AGENTRT_MAX_TURNS_PER_MINUTE": "1000000",
        "AGENTRT_MAX_CONCURRENT_TURNS": "1000",
    }
    stack = local_stack(storage, NAMESPACE, 1, env, dev_users=tuple(f"tp{i}" for i in range(args.users)))
    with running(stack, remove=storage):
        report = asyncio.run(run(args, stack, storage))
    print_report(report)
    write_report(args.out, report)
    return 1 if any(phase["errors"] for phase in report["phases"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
