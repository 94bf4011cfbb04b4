"""The one backoff rule, and the one reading of a server's `Retry-After`.

After the n-th failure in a row wait `first * factor**(n-1)` seconds (doubling by default), at least `floor`
(a server's `Retry-After`, a polling interval) and at most `most`. Schedules, the alarm scheduler, handles,
the CIBA client and wrapper, tool retries, the credential store and the ingress stream all use it.
"""

from __future__ import annotations

import email.utils
import time


def exponential_delay(failures: int, first: float, most: float, *, floor: float = 0.0, factor: float = 2.0) -> float:
    return min(most, max(floor, first * factor ** max(0, failures - 1)))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date (RFC 9110 section 10.2.3); None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
