"""Ray's metrics endpoint after one purchase approved and one denied, as its own process with its own Ray
(so the counts are exactly this scenario's). Prints one JSON line: the sums of the series the test reads
(`tests/test_metrics.py`). Run: `python tests/metrics_scenario.py <storage dir>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.node_loss_scenario import services, until  # noqa: E402

SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    series = []
    for line in text.splitlines():
        match = SERIES.match(line.strip())
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match["labels"] or ""))
            series.append((match["name"], labels, float(match["value"])))
    return series


def total(series: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, ls, v in series if n == name and all(ls.get(k) == want for k, want in labels.items()))


async def purchase(thread: Any, token: str, http: httpx.AsyncClient, text: str, approve: bool) -> None:
    await thread.send_message(token, text)
    (request,) = await until(lambda: _pending(http), timeout=30, what=f"the CIBA request for {text!r}")
    action = "approve" if approve else "deny"
    (await http.post(f"/dev/ciba/requests/{request['id']}/{action}")).raise_for_status()
    word = "Purchased" if approve else "denied"

    async def finished() -> bool:
        messages = await thread.get_messages(token)
        return any(m.role == "tool" and m.content and word in m.content for m in messages[-4:])

    await until(finished, timeout=60, what=f"the outcome of {text!r}")


async def _pending(http: httpx.AsyncClient) -> list[dict[str, Any]] | None:
    return (await http.get("/dev/ciba/requests", params={"status": "pending"})).json() or None


async def scenario(storage_dir: Path) -> dict[str, Any]:
    import ray

    import runtime
    from agents.chat import Chat
    from devservers.server_thread import free_port
    from runtime import get_agent

    authz, _checkout, _model, env = services()
    env.pop("AGENT_HOST_RESOURCES")
    os.environ.update(env)
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="agents-metrics",
        runtime_env={"env_vars": env},
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    runtime.init(storage_dir=storage_dir, namespace="agents-metrics")
    async with httpx.AsyncClient(base_url=authz.url, timeout=10) as http:
        token = (await http.post("/dev/login", json={"username": "alice"})).json()["access_token"]
        thread = get_agent(Chat, "t-metrics", storage_dir=storage_dir, namespace="agents-metrics")
        await purchase(thread, token, http, "Buy 2 shares of MSFT", approve=True)
        await purchase(thread, token, http, "Buy 4 shares of AAPL", approve=False)

    async def exported() -> list[tuple[str, dict[str, str], float]] | None:
        async with httpx.AsyncClient(timeout=5) as scrape:
            series = parse((await scrape.get(f"http://127.0.0.1:{port}/metrics")).text)
        done = total(series, "ray_agentrt_ciba_requests_total", outcome="denied") >= 1
        return series if done and total(series, "ray_agentrt_ciba_approval_to_resume_seconds_count") >= 1 else None

    await until(exported, timeout=60, what="the metrics on Ray's endpoint")
    last: list[Any] = []

    async def settled() -> list[tuple[str, dict[str, str], float]] | None:
        """Two scrapes a report interval apart that agree: every worker's last values are exported."""
        series = await exported()
        values = sorted((n, sorted(ls.items()), v) for n, ls, v in series or [] if n.startswith("ray_agentrt_"))
        stable = bool(last) and values == last[-1]
        last.append(values)
        await asyncio.sleep(0 if stable else 1.5)
        return series if stable else None

    series = await until(settled, timeout=60, what="the metrics to settle")
    ray.shutdown()
    return summary(series)


def summary(series: list[tuple[str, dict[str, str], float]]) -> dict[str, Any]:
    """What the test checks: the metric names exported, and the counts that tell the story."""
    names = sorted({n for n, _, _ in series if n.startswith("ray_agentrt_")})
    return {
        "names": names,
        "approved": total(series, "ray_agentrt_ciba_requests_total", tool="buy_stock", outcome="approved"),
        "denied": total(series, "ray_agentrt_ciba_requests_total", tool="buy_stock", outcome="denied"),
        "errors": total(series, "ray_agentrt_ciba_requests_total", outcome="error"),
        "polls": total(series, "ray_agentrt_ciba_polls_total"),
        "polls_per_approval_count": total(series, "ray_agentrt_ciba_polls_per_approval_count"),
        "approval_to_resume_count": total(series, "ray_agentrt_ciba_approval_to_resume_seconds_count"),
        "turns_ok": total(series, "ray_agentrt_turns_total", agent_class="Chat", outcome="ok"),
        "turn_seconds_count": total(series, "ray_agentrt_turn_seconds_count", agent_class="Chat"),
        "model_calls": total(series, "ray_agentrt_model_call_seconds_count"),
        "activations": total(series, "ray_agentrt_activations_total", agent_class="Chat"),
        "schedule_runs_ok": total(series, "ray_agentrt_schedule_runs_total", outcome="ok"),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scenario(Path(sys.argv[1])))))
