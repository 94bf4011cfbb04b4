"""What the benchmarks share: percentiles, summaries, timed rounds and phases, machine info, a scan of Ray's
logs for warnings, Ray's worker processes, the report's head and its JSON file, a local stack, and small
helpers to drive it over HTTP, answer its CIBA requests and read a thread's file. (Their tables:
`bench/tables.py`.)"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ray

T = TypeVar("T")


@ray.remote(num_cpus=0)
class Bare:
    """The floor of any agent call: a bare Ray async actor. At module level so that Ray pickles it by
    reference (`bench.common.Bare`): the scripts that use it run with the repository on the workers' path."""

    async def noop(self) -> None:
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarise(seconds: list[float]) -> dict[str, Any]:
    """p50/p99/mean/max in milliseconds."""
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 0.50) * 1000, 3),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
    }


def ratio(a: float, b: float) -> float | None:
    """a / b to two places; None when there is no b to compare with."""
    return round(a / b, 2) if b else None


async def timed_calls(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    """`n` sequential awaits of `call()`, each one's seconds."""
    out: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


async def alternating_rounds(
    variants: dict[str, Callable[[], Awaitable[Any]]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """About `calls` timed calls of each variant, split into `rounds` rounds that take the variants in turn,
    so that drift (other load on the machine) hits every variant alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, call in variants.items():
            samples[name].extend(await timed_calls(call, per_round))
    return samples


async def timed_phase(phases: dict[str, float], key: str, work: Awaitable[T]) -> T:
    """Await one phase of a run, noting its seconds in `phases[key]` (the report says where time went)."""
    started = time.perf_counter()
    result = await work
    phases[key] = round(time.perf_counter() - started, 2)
    return result


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


_PY_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|blocking", re.IGNORECASE)


_GLOG_LEVEL = re.compile(r"^\[\S+ \S+ ([WEF]) \d+ \d+\]")


_BENIGN = (
    "Failed to look up actor with name",  # get_if_exists=True probes the name before creating the actor
    "Quick exit - terminating process",  # ray.kill / shutdown
    "Failed to export metrics to the metrics agent",  # no dashboard, so no metrics agent
    "Token authentication is enabled",
    "Disconnecting client due to connection error",  # a worker exited (ray.kill of the bare actors)
    "Dropping profiling events for task",  # the driver's own task past Ray's profile-event cap
)


def scan_logs(session_dir: str | None) -> dict[str, Any]:
    """Warning/error lines of this session: workers' stdout/stderr (Python logging, tracebacks, anything
    saying "blocking") and raylet/GCS/core-worker logs (glog W/E/F), grouped with digits masked."""
    if not session_dir:
        return {"scanned": False}
    logs = Path(session_dir) / "logs"
    groups = {
        "worker_stdio": [*logs.glob("worker-*.out"), *logs.glob("worker-*.err")],
        "raylet_gcs": [*logs.glob("raylet.*"), *logs.glob("gcs_server.*")],
        "core_worker": [*logs.glob("python-core-worker-*.log"), *logs.glob("python-core-driver-*.log")],
    }
    counts: Counter[str] = Counter()
    benign: Counter[str] = Counter()
    samples: Counter[str] = Counter()
    for group, files in groups.items():
        for path in files:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                glog = _GLOG_LEVEL.match(line)
                if glog:
                    kind = {"W": "warning", "E": "error", "F": "fatal"}[glog.group(1)]
                elif group == "worker_stdio" and _PY_LEVEL.search(line):
                    kind = "blocking" if "blocking" in line.lower() else "warning/error"
                else:
                    continue
                if any(b in line for b in _BENIGN):
                    benign[f"{group}:{kind}"] += 1
                    continue
                counts[f"{group}:{kind}"] += 1
                text = line[glog.end() :] if glog else line
                samples[
                    f"{group}: " + re.sub(r"\d+", "N", re.sub(r"\b[0-9a-f]{16,}\b", "<id>", text.strip()))[:160]
                ] += 1
    return {
        "scanned": True,
        "session_dir": session_dir,
        "counts": dict(counts),
        "benign_counts": dict(benign),
        "samples": [{"count": c, "line": line} for line, c in samples.most_common(12)],
    }


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ray_worker_pids(parent: int | None = None) -> list[int]:
    """The Ray worker processes on this machine (command line `ray::...`), or only the children of
    `parent` (one raylet's, when several clusters share the machine)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
            if parent is not None and f"\nPPid:\t{parent}\n" not in (proc / "status").read_text():
                continue
        except OSError:
            continue
        pids.append(int(proc.name))
    return pids


def ray_session_dir() -> str | None:
    """This driver's Ray session folder (where `scan_logs` looks), if Ray says."""
    try:
        return ray._private.worker._global_node.get_session_dir_path()  # type: ignore[attr-defined]
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray_version": ray.__version__,
    }


def report_head(benchmark: str, *, utc_timestamp: bool = False) -> dict[str, Any]:
    """What every report starts with: its name, when it ran, on what machine. The older scripts stamp
    local time under "when", the newer ones UTC under "timestamp": kept, so that each file keeps its keys."""
    if utc_timestamp:
        stamp = {"timestamp": datetime.now(UTC).isoformat(timespec="seconds")}
    else:
        stamp = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return {"benchmark": benchmark, **stamp, "machine": machine_info()}


def write_report(path: Path, report: dict[str, Any], note: str = "") -> None:
    """The report as indented JSON at `path` (its folder made if need be); says where, and `note`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {path}{note}")


def local_stack(storage_dir: Path, namespace: str, ciba_interval: int, env: dict[str, str], **options: Any) -> Any:
    """The whole stack on free ports with a fresh storage root, configured by `env` (set here in this
    process too: the driver decides a root's host count first) and `options` (more `StackOptions`).
    Not started yet."""
    from agentrt.stack import Stack, StackOptions

    os.environ.update(env)
    return Stack(
        StackOptions(
            port=0,
            authz_port=None,
            checkout_port=None,
            model_port=None,
            storage_dir=storage_dir,
            namespace=namespace,
            ciba_interval=ciba_interval,
            extra_env=env,
            **options,
        )
    )


@contextmanager
def running(stack: Any, remove: Path | None = None) -> Iterator[Any]:
    """The stack started for the block and stopped after it, whatever happens (a half-started stack too);
    then `remove` (its storage root) deleted, if given."""
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if remove is not None:
            shutil.rmtree(remove, ignore_errors=True)


class StackWorld:
    """What the benchmarks that call agents directly need of a running stack: demo users' tokens, the dev
    authorization server's counters, the checkout's order count, the offline model's URL."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.authz = stack.authz
        self.model = stack.model
        self._tokens: dict[str, str] = {}

    def token(self, username: str) -> str:
        if username not in self._tokens:
            response = httpx.post(f"{self.authz.url}/dev/login", json={"username": username}, timeout=10)
            response.raise_for_status()
            self._tokens[username] = response.json()["access_token"]
        return self._tokens[username]

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.authz.url}/dev/stats", timeout=10).json()

    def orders(self) -> int:
        return httpx.get(f"{self.stack.checkout.api_url}/stats", timeout=10).json()["orders"]


# -- driving the stack over HTTP ------------------------------------------------------------------------


async def timed(http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None = None) -> float:
    started = time.perf_counter()
    response = await http.request(method, path, json=body)
    if response.status_code >= 400:
        raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
    return time.perf_counter() - started


async def new_thread_with_message(http: httpx.AsyncClient, thread_id: str, text: str) -> float:
    started = time.perf_counter()
    await timed(http, "POST", "/threads", {"thread_id": thread_id})
    await timed(http, "POST", f"/threads/{thread_id}/messages", {"content": text})
    return time.perf_counter() - started


async def pending_requests(phone: httpx.AsyncClient, user: str | None = "alice") -> list[dict[str, Any]]:
    """The pending CIBA requests on the dev server (`phone`'s base URL), of `user` or of everyone (None)."""
    params = {"status": "pending"} if user is None else {"user": user, "status": "pending"}
    return (await phone.get("/dev/ciba/requests", params=params)).json()


async def approve(phone: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    """The user approves the request on their phone (the dev server's API); the request as decided."""
    response = await phone.post(f"/dev/ciba/requests/{request_id}/approve")
    response.raise_for_status()
    return response.json()


async def wait_until(probe: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout  # from now, not from the start of the run
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def final_message_at(path: Path, after: float) -> float | None:
    """When the thread's last assistant message after its purchase result was written (from its own file)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            call = db.execute("SELECT state FROM tool_calls WHERE name = 'buy_stock'").fetchone()
            if call is None or call[0] != "result":
                return None
            row = db.execute(
                "SELECT MAX(created_at) FROM messages WHERE role = 'assistant' AND created_at > ?", (after,)
            ).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row and row[0] is not None else None


async def answered_at(path: Path, after: float) -> float | None:
    """`final_message_at` as a probe for `wait_until`."""
    return final_message_at(path, after)
