"""The routes around the threads: health, the page's configuration, demo sign-in, the CIBA ping endpoint,
and the web page itself (`/`, `/static/...`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import lru_cache
from pathlib import Path

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from agentrt.ingress.errors import HttpProblem
from agentrt.ingress.gateway import gateway
from agentrt.ingress.schemas import (
    BODY_ERROR_RESPONSES,
    CibaPing,
    DevLoginRequest,
    DevLoginResponse,
    ErrorBody,
    Health,
    PublicConfig,
)
from agentrt.ingress.settings import IngressSettings, settings_dependency
from auth.http_pool import shared_client
from auth.settings import AuthSettings
from auth.verifier import bearer_token
from runtime import InvalidAgentIdError, validate_agent_id
from tools.ciba.ping import deployment_ping_key, notification_target

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
PING_ANSWER_SECONDS = 3.0
"""How long a CIBA ping waits for its thread's answer before it is acknowledged (202) and delivered later."""
REPLICA = uuid.uuid4().hex[:8]
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["service"])
async def healthz() -> Health:
    return Health(ok=True, replica=REPLICA, time=time.time())


@router.get("/config", response_model=PublicConfig, tags=["service"])
async def config(request: Request, settings: IngressSettings = Depends(settings_dependency)) -> PublicConfig:
    """What the web page and the CLI need to know: the issuer, and with the dev authorization server, where
    to sign in as a demo user and where the approval page ("the phone") is."""
    dev = settings.dev_base()
    auth = AuthSettings()
    return PublicConfig(
        issuer=auth.issuer_if_set or (dev + "/" if dev else None),
        audience=auth.auth0_audience,
        dev_login_url=str(request.base_url) + "dev/login" if dev else None,
        dev_authz_url=dev,
        approvals_url=settings.approval_page(),
        demo_users=["alice", "bob"] if dev else [],
    )


@router.post(
    "/dev/login",
    response_model=DevLoginResponse,
    responses={
        404: {"model": ErrorBody, "description": "No dev authorization server (or unknown user)."},
        502: {"model": ErrorBody, "description": "The dev authorization server refused the login."},
        503: {"model": ErrorBody, "description": "The dev authorization server does not answer."},
        **BODY_ERROR_RESPONSES,
    },
    tags=["service"],
)
async def dev_login(body: DevLoginRequest, settings: IngressSettings = Depends(settings_dependency)) -> Response:
    """A demo user's access token from the dev authorization server (only when one is configured).

    The page signs in through here, same-origin, so the dev server needs no CORS and the page's
    Content-Security-Policy can stay `connect-src 'self'`."""
    dev = settings.dev_base()
    if not dev:
        raise HttpProblem(404, "not_found", "this server has no dev authorization server")
    try:
        upstream = await shared_client().post(f"{dev}/dev/login", json={"username": body.username}, timeout=10.0)
    except httpx.HTTPError:
        raise HttpProblem(503, "authz_unavailable", "the dev authorization server does not answer") from None
    if upstream.status_code == 404:
        raise HttpProblem(404, "unknown_user", f"no demo user {body.username!r}")
    if upstream.status_code >= 400:
        raise HttpProblem(502, "authz_error", "the dev authorization server refused the login")
    return JSONResponse(upstream.json(), headers={"Cache-Control": "no-store"})


@lru_cache(maxsize=1)
def _ping_mac_key() -> bytes:
    return deployment_ping_key()


@router.post(
    "/ciba/notify",
    status_code=204,
    responses={
        204: {"description": "The ping was accepted: the thread checks the approval now."},
        202: {"description": "Genuine, and queued for its thread (every live thread is busy): checked soon."},
        401: {"model": ErrorBody, "description": "Not a notification token of a pending approval."},
        503: {"model": ErrorBody, "description": "The thread's agent is unavailable; the provider retries."},
        **BODY_ERROR_RESPONSES,
    },
    tags=["approvals"],
)
async def ciba_notify(body: CibaPing, request: Request) -> Response:
    """CIBA ping mode (CIBA Core 1.0 section 10.2): the provider's notification that the user decided.

    The bearer is the `client_notification_token` of one pending approval; it names the thread, which then
    polls the token endpoint at once (a ping alone never approves anything). An unknown, wrong or replayed
    token is 401 and wakes nothing."""
    token = bearer_token(request.headers.get("authorization"))
    target = notification_target(_ping_mac_key(), token) if token else None
    refused = HttpProblem(401, "invalid_token", "not a valid notification token", {"WWW-Authenticate": "Bearer"})
    if target is None:  # not signed by us: refused here, no agent is woken
        raise refused
    try:
        chat = await gateway.thread(validate_agent_id(target.thread_id))
    except InvalidAgentIdError:
        raise refused from None
    delivery = asyncio.ensure_future(gateway.call(chat, "notify_ciba_ping", token, body.auth_req_id))
    delivery.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:  # a thread waiting for room (every live agent busy) still gets it; the provider need not wait
        accepted = await asyncio.wait_for(asyncio.shield(delivery), PING_ANSWER_SECONDS)
    except TimeoutError:
        return Response(status_code=202)
    except HttpProblem as exc:
        if exc.status_code == 503:
            raise
        raise refused from None
    if not accepted:
        raise refused
    return Response(status_code=204)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HttpProblem(404, "not_found", "no such file")
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})
