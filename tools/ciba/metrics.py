"""The CIBA flow's metrics (see `runtime.metrics`): requests by outcome, polls, approval-to-resume time."""

from __future__ import annotations

from runtime.metrics import Metric

CIBA_REQUESTS = Metric(
    "counter",
    "agentrt_ciba_requests_total",
    "CIBA requests by outcome (approved, denied, expired, error, lost: approved but the answer was lost)",
    ["tool", "outcome"],
)
CIBA_POLLS = Metric("counter", "agentrt_ciba_polls_total", "Token endpoint polls", ["tool"])
POLLS_PER_APPROVAL = Metric(
    "histogram",
    "agentrt_ciba_polls_per_approval",
    "Polls it took to collect an approval",
    ["tool"],
    boundaries=(1, 2, 3, 5, 10, 20, 50, 100, 300),
)
APPROVAL_TO_RESUME_SECONDS = Metric(
    "histogram",
    "agentrt_ciba_approval_to_resume_seconds",
    "From the approval (the ping, or the last poll that still said pending) to the tool's result",
    ["tool"],
)
