"""The Serve application: the FastAPI app with its routers, error handlers and request guard, and the
deployment that runs it (`AgentIngress`, stateless: all state lives in the agents)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import FastAPI
from ray import serve

from agentrt.ingress import ai_sdk, service, threads
from agentrt.ingress.errors import install_error_handlers
from agentrt.ingress.gateway import thread_agent_class
from agentrt.ingress.guard import RequestGuard
from runtime.counters import counters

logger = logging.getLogger("agentrt.ingress")

api = FastAPI(
    title="ray-agent-runtime",
    version="0.1.0",
    description=(
        "Durable chat threads on Ray. Each thread is an agent that asks its owner to approve purchases on "
        "another device (OpenID CIBA) and finishes the purchase by itself once approved. Every `/threads` "
        "route needs `Authorization: Bearer <JWT>` from the configured issuer."
    ),
)
api.add_middleware(RequestGuard)
install_error_handlers(api)
api.include_router(service.router)
api.include_router(threads.router)
api.include_router(ai_sdk.router)
api.state.method_routes = [
    *service.router.routes,
    *threads.router.routes,
    *ai_sdk.router.routes,
]  # for the Allow header of a 405


@serve.deployment(
    name="AgentIngress", max_ongoing_requests=1000, max_queued_requests=2000, ray_actor_options={"num_cpus": 0}
)
@serve.ingress(api)
class AgentIngress:
    """The Serve replica. On start it makes sure the storage root's alarm scheduler and agent hosts run:
    after a cluster restart the threads waiting for approvals resume without waiting for someone to call
    them, and the first request after a deploy finds its host already started."""

    def __init__(self) -> None:
        from runtime.registry import start_runtime
        from runtime.storage_choice import check_storage

        served = thread_agent_class()  # a wrong AGENTRT_AGENT_CLASS fails the deployment, with its name
        check_storage()  # so does a malformed or unreachable AGENT_STORAGE_URL (named, without its password)

        try:
            start_runtime(watch_scheduler=True, preload=[served.__module__])
        except Exception as exc:  # handles still start them on first use
            logger.warning("could not start the agent runtime: %s", exc)

    def counters(self) -> dict[str, int]:
        """This replica's event counters (token checks, ...), through a Serve handle, not over HTTP."""
        return counters()


def build_app(
    env_vars: Mapping[str, str | None] | None = None,
    *,
    num_replicas: int | Literal["auto"] = 1,
    max_ongoing_requests: int = 1000,
    max_queued_requests: int = 2000,
) -> serve.Application:
    """The ingress application, its replicas started with `env_vars` added to their environment.

    Agents inherit their creator's environment, so `AUTH0_*`, `OPENAI_*`, `CHECKOUT_*`, `AGENT_*` given
    here reach the `Chat` actors the ingress creates.
    """
    options: dict[str, Any] = {"num_cpus": 0}
    env = {k: str(v) for k, v in (env_vars or {}).items() if v is not None}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return AgentIngress.options(
        num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,  # beyond: Serve answers 503 at once instead of queueing
        ray_actor_options=options,
    ).bind()
