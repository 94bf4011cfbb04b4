"""Who is calling, and which thread: the FastAPI dependencies every thread route starts with.

Tokens are verified twice on the way to a thread, once per hop, each for its own reason: here at the
edge, so an unauthenticated request never costs the cluster an actor (and a bad token is a 401 before any
agent wakes); and in the agent (`AuthAgent`), because agents are also called from Python scripts and by
any Ray client in the namespace, and trust no caller. Each process keeps the tokens it verified for up to
a minute (`auth.verifier`), so the chat agent and the directory agent of one host share one verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentrt.ingress.errors import bearer_required
from agentrt.ingress.gateway import AgentGateway, gateway
from agentrt.ingress.schemas import THREAD_ID_SCHEMA
from agents.auth_agent import verified_claims as claims_of
from auth.settings import AuthSettings
from auth.verifier import JWTVerifier
from runtime import AgentHandle, validate_agent_id

bearer_scheme = HTTPBearer(auto_error=False, description="A JWT from the configured issuer (audience: the agent API).")


@lru_cache(maxsize=1)
def _verifier() -> JWTVerifier:
    return AuthSettings().shared_verifier()


async def verified_claims(token: str) -> dict[str, Any]:
    """The claims of a valid token of the configured issuer and audience, else a 401 (503 if the issuer's
    keys cannot be fetched): `agents.auth_agent.verified_claims` with this replica's verifier."""
    return await claims_of(_verifier(), token)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: their raw token (passed on to the agents) and subject."""

    token: str
    subject: str


async def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> Caller:
    """The authenticated caller of a route that names no thread."""
    return await _caller_of(credentials)


async def _caller_of(credentials: HTTPAuthorizationCredentials | None) -> Caller:
    if credentials is None or not credentials.credentials.strip():
        raise bearer_required()
    token = credentials.credentials.strip()
    return Caller(token=token, subject=(await verified_claims(token))["sub"])


@dataclass(frozen=True)
class ThreadAccess:
    """A caller bound to an existing thread's agent: `await thread.call("get_messages")` sends the method
    with the caller's token first, as every thread method expects."""

    caller: Caller
    thread_id: str
    handle: AgentHandle[Any]
    gateway: AgentGateway

    async def call(self, method: str, *args: Any, cancel_remote: bool = False, idempotent: bool = False) -> Any:
        return await self.gateway.call(
            self.handle, method, self.caller.token, *args, cancel_remote=cancel_remote, idempotent=idempotent
        )

    async def next_events(self, after: int, epoch: str | None, wait: float) -> dict[str, Any]:
        """One `poll_events` long-poll (up to `wait` s); cancelling it cancels the call in the agent too."""
        return await self.call("poll_events", after, epoch, wait, cancel_remote=True)

    async def reconnect(self) -> ThreadAccess:
        """The same access through a fresh handle (after the agent's host went away)."""
        return ThreadAccess(self.caller, self.thread_id, await self.gateway.thread(self.thread_id), self.gateway)


async def thread_access(
    thread_id: str = Path(description="The thread's id.", json_schema_extra=THREAD_ID_SCHEMA),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> ThreadAccess:
    """An existing thread (an unknown id is a 404 at the first call, and starts nothing). One dependency,
    not three: FastAPI resolves each on every request, and a read is a few of them plus one actor call."""
    return await bind_thread(await _caller_of(credentials), thread_id)


async def bind_thread(who: Caller, thread_id: str) -> ThreadAccess:
    """`who`'s access to the thread `thread_id` (checked as an agent id; the agent checks the rest)."""
    thread_id = validate_agent_id(thread_id)
    return ThreadAccess(who, thread_id, await gateway.thread(thread_id), gateway)
