"""The one backoff rule: after the n-th failure in a row wait `first * 2**(n-1)` seconds, at least `floor`
(a server's `Retry-After`, a polling interval) and at most `most`."""

from __future__ import annotations


def exponential_delay(failures: int, first: float, most: float, *, floor: float = 0.0) -> float:
    return min(most, max(floor, first * 2 ** max(0, failures - 1)))
