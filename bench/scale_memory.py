"""What the scale benchmark watches (see `bench/scale_bench.py`): the node's memory, the storage root's host
actors (their live agents and resident memory), sampled in the background for the peaks, and the floor
under a host, an empty Ray actor process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from bench.common import rss_mib

NAMESPACE = "agents-scale-bench"


def node_used_mib() -> float:
    """Memory in use on the node (MemTotal - MemAvailable), MiB."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0])
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


def processes_by_role() -> dict[str, list[int]]:
    """This node's Ray processes by role (`AgentHost`, `AlarmScheduler`, `ServeReplica:...`, `raylet`...),
    and this driver (which runs the dev services), by pid."""
    roles: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        first = argv[0].decode(errors="replace")
        if int(proc.name) == os.getpid():
            role = "driver and dev services"
        elif first.startswith("ray::"):
            role = first[5:].split(".", 1)[0].split(":", 1)[0] if "ServeReplica" not in first else first[5:]
        elif any(b"ray" in part for part in argv[:3]):
            role = Path(first).name or "ray"
        else:
            continue
        roles.setdefault(role, []).append(int(proc.name))
    return roles


def resident_mib_by_role() -> dict[str, float]:
    """Resident memory (MiB) of this node's Ray processes and of this driver by role: where a node's memory
    went, which its total alone does not say."""
    roles = {role: round(sum(rss_mib(pid) or 0.0 for pid in pids), 1) for role, pids in processes_by_role().items()}
    return dict(sorted(((role, mib) for role, mib in roles.items() if mib), key=lambda item: -item[1]))


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) this node's Ray processes and this driver have used so far, by role."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    for role, pids in processes_by_role().items():
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            seconds[role] = seconds.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return seconds


class Hosts:
    """The storage root's host actors: live agents and their processes' memory."""

    def __init__(self, storage_dir: Path, namespace: str = NAMESPACE) -> None:
        self.storage_dir = storage_dir
        self.namespace = namespace

    async def stats(self) -> list[dict[str, Any]]:
        import ray

        from runtime.placement import host_name
        from runtime.placement_view import current_placement

        out = []
        for slot in range(current_placement(self.storage_dir.resolve(), self.namespace).hosts):
            try:
                handle = ray.get_actor(host_name(self.storage_dir.resolve(), slot), namespace=self.namespace)
                out.append(await handle.stats.remote())
            except Exception:
                continue
        return out

    async def live_names(self) -> set[str]:
        return {name for stats in await self.stats() for name in stats["live_names"]}

    async def none_live(self, prefix: str) -> bool:
        """No thread whose id starts with `prefix` is live (all hibernated): a probe for `wait_until`."""
        return not any(name.split("/", 1)[1].startswith(prefix) for name in await self.live_names())


class Sampler:
    """Samples node memory, host RSS and live agents every `interval` s in the background; keeps peaks."""

    def __init__(self, hosts: Hosts, interval: float = 0.5) -> None:
        self.hosts = hosts
        self.interval = interval
        self.peak_node_mib = 0.0
        self.peak_live = 0
        self.peak_host_rss_mib = 0.0
        self.rss_at_peak_live = 0.0
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> dict[str, Any]:
        stats = await self.hosts.stats()
        live = sum(s["live"] + s["leaving"] for s in stats)
        rss = sum(rss_mib(s["pid"]) for s in stats)
        node = node_used_mib()
        self.peak_node_mib = max(self.peak_node_mib, node)
        self.peak_host_rss_mib = max(self.peak_host_rss_mib, rss)
        if live >= self.peak_live:
            self.peak_live, self.rss_at_peak_live = live, rss
        return {"live": live, "host_rss_mib": rss, "node_mib": node, "hosts": len(stats)}

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                pass
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def bare_actor_rss() -> float:
    """RSS of an empty Ray actor process: the floor under any host. (Defined here, not `bench.common.Bare`:
    pickled by value, it needs nothing of `bench` on the workers' path.)"""
    import ray

    @ray.remote(num_cpus=0)
    class Bare:
        def pid(self) -> int:
            return os.getpid()

    actor = Bare.remote()
    try:
        return rss_mib(await actor.pid.remote())
    finally:
        ray.kill(actor)
