"""Metrics through Ray's own (`ray.util.metrics`): each node's metrics agent exports them on Ray's
Prometheus endpoint (with Ray's `ray_` prefix), so they appear beside Ray's in its Grafana dashboards.

Each layer declares its metrics where it records them (`Metric("agentrt_turns_total", ...)` at module
level: nothing is created then); the Ray metric object is made in the process that first records, and
recording outside a Ray worker or driver (an agent used in-process, a unit test) does nothing. A metric
that cannot be recorded never fails the work it measures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

logger = logging.getLogger("runtime.metrics")

Kind = Literal["counter", "histogram", "gauge"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Seconds, from a fast turn to an approval a user gave an hour later."""


class Metric:
    """One metric: `inc` (counter), `observe` (histogram) or `set` (gauge), each with its tags."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        description: str,
        tag_keys: Sequence[str] = (),
        boundaries: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.kind = kind
        self.name = name
        self.description = description
        self.tag_keys = tuple(tag_keys)
        self.boundaries = list(boundaries)
        self._made: Any = None
        self._pid: int | None = None

    def inc(self, value: float = 1.0, **tags: str) -> None:
        self._record(value, tags)

    def observe(self, value: float, **tags: str) -> None:
        self._record(value, tags)

    def set(self, value: float, **tags: str) -> None:
        self._record(value, tags)

    def _record(self, value: float, tags: dict[str, str]) -> None:
        try:
            made = self._metric()
            if made is None:
                return
            tags = {key: str(tags.get(key, "")) for key in self.tag_keys}
            if self.kind == "counter":
                made.inc(value, tags=tags)
            elif self.kind == "histogram":
                made.observe(value, tags=tags)
            else:
                made.set(value, tags=tags)
        except Exception as exc:  # a metric never fails the work it measures
            logger.debug("metric %s not recorded: %s", self.name, exc)

    def _metric(self) -> Any:
        if self._made is not None and self._pid == os.getpid():
            return self._made
        import ray

        if not ray.is_initialized():
            return None
        from ray.util import metrics

        if self.kind == "counter":
            self._made = metrics.Counter(self.name, description=self.description, tag_keys=self.tag_keys)
        elif self.kind == "histogram":
            self._made = metrics.Histogram(
                self.name, description=self.description, boundaries=self.boundaries, tag_keys=self.tag_keys
            )
        else:
            self._made = metrics.Gauge(self.name, description=self.description, tag_keys=self.tag_keys)
        self._pid = os.getpid()
        return self._made


# -- the runtime's own ---------------------------------------------------------------------------------
ACTIVATIONS = Metric("counter", "agentrt_activations_total", "Agents activated (created or woken)", ["agent_class"])
HIBERNATIONS = Metric("counter", "agentrt_hibernations_total", "Agents that went to sleep", ["agent_class"])
LIVE_AGENTS = Metric("gauge", "agentrt_live_agents", "Agents live in a host", ["host"])
TURNS = Metric("counter", "agentrt_turns_total", "Turns run, by outcome (ok, error)", ["agent_class", "outcome"])
TURN_SECONDS = Metric("histogram", "agentrt_turn_seconds", "Turn latency inside the agent", ["agent_class"])
SCHEDULE_RUNS = Metric(
    "counter", "agentrt_schedule_runs_total", "Schedule callbacks run, by outcome (ok, retry, parked)", ["outcome"]
)
DUE_ALARMS = Metric("gauge", "agentrt_due_alarms", "Agents with a due alarm in the scheduler's index (asleep or live)")
AGENTS_ON_FILE = Metric(
    "gauge",
    "agentrt_agents_on_file",
    "Agents the storage root holds (minus the live ones: asleep), counted each minute",
)
ALARMS_PROBED = Metric(
    "counter",
    "agentrt_alarms_probed_total",
    "Sleeping agents' alarms whose probe found nothing to do yet: wake-ups the scheduler saved",
)
