"""What the benchmarks share: percentiles, summaries, machine info, a scan of Ray's logs for warnings, a
local stack, and small helpers to drive it over HTTP and read a thread's file."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import sqlite3
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import ray


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


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray_version": ray.__version__,
    }


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
