"""The chat agents' metrics (see `runtime.metrics`): model calls, and tool errors and retries."""

from __future__ import annotations

from runtime.metrics import Metric

MODEL_CALL_SECONDS = Metric("histogram", "agentrt_model_call_seconds", "One streamed model completion", ["model"])
MODEL_ERRORS = Metric("counter", "agentrt_model_errors_total", "Model calls that failed", ["model", "error"])
TOOL_ERRORS = Metric("counter", "agentrt_tool_errors_total", "Tool calls that ended in an error", ["tool"])
TOOL_RETRIES = Metric(
    "counter",
    "agentrt_tool_retries_total",
    "Tool calls tried again after a transient failure (e.g. the checkout API down)",
    ["tool"],
)
