"""Process-wide event counters (token checks, cache hits, ...): cheap, in memory, read by `AgentHost.stats()`
and the ingress, so benchmarks and operators can see how often the expensive things happen."""

from __future__ import annotations

from collections import Counter

_counts: Counter[str] = Counter()


def count(name: str, n: int = 1) -> None:
    _counts[name] += n


def counters() -> dict[str, int]:
    """A snapshot of this process's counters."""
    return dict(_counts)
