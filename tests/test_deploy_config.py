"""The deployment files: `deploy/serve_config.yaml` is a valid Ray Serve config that runs, and the KubeRay
RayService serves the same application, with its secrets from a Kubernetes Secret, never inline.

`serve run` of the config (placeholders filled with this session's test services and PostgreSQL) starts on a
cluster of its own (`--address local`) and must answer `/healthz`.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from devservers.server_thread import free_port

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "deploy" / "serve_config.yaml"
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"
SECRET_VARS = {"AGENT_STORAGE_URL", "AUTH0_CLIENT_SECRET", "AUTH0_SESSION_ENCRYPTION_KEY", "OPENAI_API_KEY"}


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def rayservice() -> dict[str, Any]:
    return yaml.safe_load(RAYSERVICE.read_text())


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_the_serve_config_validates_against_ray_serves_schema() -> None:
    schema = ServeDeploySchema.model_validate(serve_config())
    (app,) = schema.applications
    assert app.import_path == "agentrt.ingress:app" and app.route_prefix == "/"
    (deployment,) = app.deployments
    assert deployment.name == "AgentIngress" and deployment.max_queued_requests == 2000


def test_the_rayservice_serves_the_same_application_with_secrets_from_a_secret() -> None:
    service = rayservice()
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    expected = copy.deepcopy(serve_config())
    for app in expected["applications"]:
        env = app["runtime_env"]["env_vars"]
        for name in SECRET_VARS:
            env.pop(name)
    assert served == expected, "serveConfigV2 must be serve_config.yaml without the secret env vars"
    storage_dir = served["applications"][0]["runtime_env"]["env_vars"]["AGENT_STORAGE_DIR"]
    for container in containers(service):
        env = {item["name"]: item for item in container["env"]}
        for name in SECRET_VARS:
            assert "value" not in env[name], f"{name} inline in {container['name']}"
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "agentrt-secrets"
        assert {"name": "agents", "mountPath": storage_dir} in container["volumeMounts"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    volumes = [  # the durable state is in the database: each pod keeps only node-local runtime files
        v
        for group in [service["spec"]["rayClusterConfig"]["headGroupSpec"]]
        + service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        for v in group["template"]["spec"]["volumes"]
    ]
    assert volumes and all(v == {"name": "agents", "emptyDir": {}} for v in volumes)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_run_of_the_config_answers_healthz(chat_world: Any, postgres: Any, tmp_path: Path) -> None:
    config = serve_config()
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    env_vars = config["applications"][0]["runtime_env"]["env_vars"]
    env_vars.clear()
    env_vars.update(chat_world.env)
    env_vars.update(AGENT_STORAGE_DIR=str(tmp_path / "agents"), AGENT_NAMESPACE="agents-serve-run")
    env_vars.update(AGENT_HOST_CPUS="0")  # this machine's two cores: the hosts reserve none
    env_vars.update(AGENT_STORAGE_URL=postgres.url)  # the cluster's store, as the config says
    config["applications"][0]["deployments"][0]["num_replicas"] = 1
    filled = tmp_path / "serve_config.yaml"
    filled.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AUTH", "CIBA_", "AGENT"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.serve.scripts", "run", "--address", "local", str(filled)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else "serve run exited"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if response.status_code == 200:
                    assert response.json()["ok"] is True
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError("serve run of deploy/serve_config.yaml never answered /healthz")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_the_grafana_dashboard_reads_only_metrics_the_product_exports() -> None:
    """Every `ray_agentrt_*` series the sample dashboard queries is one the code declares (so the two
    cannot drift), and every declared metric has a panel."""
    import json
    import re

    from agents import metrics as agent_metrics
    from runtime import metrics as runtime_metrics
    from runtime.metrics import Metric
    from tools.ciba import metrics as ciba_metrics

    declared = {
        m.name: m
        for module in (runtime_metrics, agent_metrics, ciba_metrics)
        for m in vars(module).values()
        if isinstance(m, Metric)
    }
    dashboard = json.loads((REPO / "deploy" / "grafana" / "agentrt-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_(agentrt_[a-z_]+?)(?:_bucket|_sum|_count)?\b", target["expr"])
    }
    assert used <= set(declared), used - set(declared)
    assert set(declared) <= used, set(declared) - used
