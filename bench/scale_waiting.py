"""What the scale benchmark measures for "waiting costs nothing" and elastic placement (issue 22), while P
purchases wait for their users' approval (`bench/scale_phases.pending_approvals` calls both):

- `waiting_cost`: with the buyers asleep, the CPU the whole node spends over a window (every process of the
  stack: Ray, the hosts, the scheduler, Serve, the dev services), as a share of one core, the node's memory,
  and how many buyers are live;
- `host_change`: the host count doubled and brought back while the approvals are handled (2 -> 4 -> 2 by
  default): the share of the buyers that moved, each move's time, and the fenced (stale) activations the
  hosts saw (target 0). The purchases' exactly-once counts are the phase's own.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.common import log
from bench.scale_memory import node_used_mib

BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
"""user, nice, system, irq, softirq, steal: the busy columns of /proc/stat's "cpu" line (idle and iowait not)."""


def busy_seconds() -> float:
    """CPU seconds the whole node has been busy since boot (all cores), from /proc/stat."""
    ticks = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(ticks[i]) for i in BUSY_COLUMNS if i < len(ticks)) / os.sysconf("SC_CLK_TCK")


async def waiting_cost(run: Any, window: float) -> dict[str, Any]:
    """The node's CPU (share of one core) and memory over `window` s while the buyers wait, asleep."""
    log(f"   measuring what {run.args.pending} waiting approvals cost over {window:.0f} s ...")
    live_before = await run.hosts.live_names()
    busy, started = busy_seconds(), time.monotonic()
    await asyncio.sleep(window)
    cpu = (busy_seconds() - busy) / (time.monotonic() - started)
    live_buyers = sum(1 for n in await run.hosts.live_names() if n.split("/", 1)[1].startswith("buy-"))
    return {
        "window_s": window,
        "node_cpu_pct_of_one_core": round(100 * cpu, 1),
        "node_mib": round(node_used_mib(), 1),
        "live_agents_before": len(live_before),
        "live_buyers": live_buyers,
    }


async def host_change(run: Any, names: list[str]) -> dict[str, Any]:
    """The host count doubled, then brought back, through `runtime.set_host_count` (blocking calls)."""
    import runtime
    from runtime.placement import moved_fraction

    start = run.args.hosts
    namespace = run.hosts.namespace
    grown = await asyncio.to_thread(runtime.set_host_count, 2 * start, storage_dir=run.storage, namespace=namespace)
    back = await asyncio.to_thread(runtime.set_host_count, start, storage_dir=run.storage, namespace=namespace)
    fenced = sum(stats.get("fenced", 0) for stats in await run.hosts.stats())
    return {
        "hosts": f"{start} -> {2 * start} -> {start}",
        "moved_fraction_each_way": round(moved_fraction(names, start, 2 * start), 3),
        "live_agents_moved": grown["released"] + back["released"],
        "grow_s": grown["seconds"],
        "shrink_s": back["seconds"],
        "fenced_activations": fenced,
    }
