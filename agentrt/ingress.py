"""The HTTP ingress: a Ray Serve application (FastAPI) in front of the `Chat` thread agents.

Every thread route needs `Authorization: Bearer <JWT>`. The ingress does not judge the token: it passes
it to the thread's agent, which verifies it against the issuer's JWKS and checks ownership, and the
agent's typed errors become HTTP errors with a JSON body `{"error": code, "detail": message}`.

Routes (OpenAPI at `/docs` and `/openapi.json`):

- `POST /threads` create a thread (a new id, or a given one); the caller becomes its owner (201).
- `GET /threads` the caller's threads (from their `ThreadDirectory` agent).
- `GET /threads/{id}` who owns it and how many messages it has.
- `POST /threads/{id}/messages` `{"content"}` -> the new messages, or with `Accept: text/event-stream`
  server-sent events while the turn runs (`token`, `message`, `tool_call`, `interrupt`, ...) then `done`.
- `GET /threads/{id}/messages`, `GET /threads/{id}/interrupts`, `POST /threads/{id}/tool-results`.
- `GET /threads/{id}/events` server-sent events of everything that happens in the thread (resumable with
  `Last-Event-ID` or `?after=`; keep-alive pings), built on the agent's `poll_events` long-polls.
- `GET /healthz`, `GET /config` (what the web page needs), `GET /` (the web page).

`app` is the bound application (`serve run agentrt.ingress:app`); `build_app(env_vars)` binds one whose
replicas (and the agents they create) get the given environment.
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictBool, StrictStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.exceptions import RayError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.errors import ChatError, NotOwnerError
from agents.messages import ChatMessage, PendingApproval, ThreadEvent
from runtime import AgentCapacityError, AgentNotFoundError, InvalidAgentIdError, validate_agent_id
from tools.auth_settings import AuthConfigError, AuthSettings
from tools.ciba_ping import notification_target, ping_key
from tools.jwt_verifier import InvalidTokenError, JWTVerifier, SigningKeysUnavailableError, shared_verifier

logger = logging.getLogger("agentrt.ingress")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
DEFAULT_MAX_BODY_BYTES = 64 * 1024
PING_ANSWER_SECONDS = 3.0
"""How long a CIBA ping waits for its thread's answer before it is acknowledged (202) and delivered later."""
FAR_AFTER = 2**62  # "after everything": ask an agent for its epoch and last seq without waiting


class IngressSettings(BaseSettings):
    """The ingress's own configuration (environment of the Serve replicas)."""

    model_config = SettingsConfigDict(extra="ignore")

    dev_authz_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTRT_DEV_AUTHZ_URL"),
        description="Base URL of the dev authorization server (enables demo sign-in on the page).",
    )
    approvals_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTRT_APPROVALS_URL"),
        description="Where users approve requests (default: the dev server's /approvals page).",
    )
    issuer: str | None = Field(default=None, validation_alias=AliasChoices("AUTH_ISSUER", "AUTH0_DOMAIN"))
    audience: str | None = Field(default=None, validation_alias=AliasChoices("AUTH0_AUDIENCE"))
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, validation_alias=AliasChoices("AGENTRT_MAX_BODY_BYTES"))
    max_message_chars: int = Field(default=8000, validation_alias=AliasChoices("CHAT_MAX_MESSAGE_CHARS"))
    poll_timeout: float = Field(default=20.0, validation_alias=AliasChoices("AGENTRT_POLL_TIMEOUT"))
    sse_ping_seconds: float = Field(default=15.0, validation_alias=AliasChoices("AGENTRT_SSE_PING_SECONDS"))
    max_threads_per_user: int = Field(
        default=1000,
        ge=1,
        validation_alias=AliasChoices("AGENT_MAX_THREADS_PER_USER"),
        description="Threads one user may create; the next is refused with 429.",
    )

    def public_issuer(self) -> str | None:
        if not self.issuer:
            return None
        issuer = self.issuer if "://" in self.issuer else f"https://{self.issuer}"
        return issuer.rstrip("/") + "/"

    def dev_base(self) -> str | None:
        return self.dev_authz_url.rstrip("/") if self.dev_authz_url else None


# --------------------------------------------------------------------------------------------------------
# API models (the OpenAPI schema)


class ErrorBody(BaseModel):
    error: str = Field(description="A stable error code, e.g. `not_owner`, `invalid_thread_id`.")
    detail: Any = Field(description="A human-readable explanation (or a list of validation problems).")


class CreateThreadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thread_id: StrictStr | None = Field(
        default=None,
        description="Optional id to create or open (1-128 of letters, digits, `_`, `.`, `-`); default: a new uuid.",
        examples=["my-thread-1"],
    )


class ThreadSummary(BaseModel):
    thread_id: str
    created_at: float | None = None
    title: str | None = Field(default=None, description="The first message of the thread, shortened.")
    last_active_at: float | None = None


class ThreadCreated(ThreadSummary):
    owner: str = Field(description="The owner's `sub`: the caller.")
    created: bool = Field(description="False when the caller already had this thread.")


class ThreadList(BaseModel):
    threads: list[ThreadSummary]


class ThreadDescription(BaseModel):
    thread_id: str
    owner: str | None
    messages: int
    last_message_at: float | None


class SendMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: StrictStr = Field(description="The user's message.", examples=["buy 10 shares of MSFT"])


class MessageList(BaseModel):
    thread_id: str
    messages: list[ChatMessage]


class InterruptList(BaseModel):
    thread_id: str
    interrupts: list[PendingApproval]


class ToolResultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_call_id: StrictStr
    approved: StrictBool


class CibaPing(BaseModel):
    auth_req_id: StrictStr = Field(max_length=1024, description="The request the user decided on.")


class Health(BaseModel):
    ok: bool
    replica: str
    time: float


class DevLoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: StrictStr = Field(min_length=1, max_length=64, examples=["alice"])


class DevLoginResponse(BaseModel):
    access_token: str
    token_type: str
    expires_in: int
    sub: str


class PublicConfig(BaseModel):
    issuer: str | None = Field(description="The token issuer the agents accept.")
    audience: str | None
    dev_login_url: str | None = Field(description="`POST {username}` here for a demo token (dev server only).")
    dev_authz_url: str | None = Field(
        description="The dev authorization server (its `/dev/ciba/requests` JSON API plays the user's phone)."
    )
    approvals_url: str | None = Field(description="The page where the user approves purchases (plays the phone).")
    demo_users: list[str]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token."},
    403: {"model": ErrorBody, "description": "The thread belongs to another user."},
    404: {"model": ErrorBody, "description": "No thread with that id."},
    413: {"model": ErrorBody, "description": "The request body is too large."},
    422: {"model": ErrorBody, "description": "Invalid thread id or request body."},
    503: {"model": ErrorBody, "description": "The thread's agent is unavailable or the service is at capacity; retry."},
}
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    429: {"model": ErrorBody, "description": "The caller has as many threads as one user may create."},
}

SSE_DESCRIPTION = (
    "Server-sent events. Each event has `event:` = its type, `id:` = `<epoch>:<seq>` and `data:` = JSON "
    "(a `ThreadEvent`: `seq`, `epoch`, `type`, `data`, `at`)."
)


# --------------------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def error_response(status: int, error: str, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=dict(headers or {}))


def _error_payload(exc: BaseException) -> tuple[int, str, str]:
    if isinstance(exc, ChatError):
        return exc.status_code, exc.code, str(exc)
    if isinstance(exc, InvalidAgentIdError):
        return 422, "invalid_thread_id", str(exc)
    if isinstance(exc, ApiError):
        return exc.status, exc.error, str(exc.detail)
    return 500, "internal_error", "the request failed"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class RequestGuardMiddleware:
    """Before any parsing: thread routes without a bearer token get 401; bodies over the limit get 413
    (by Content-Length, or while a chunked body streams in)."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or int(os.environ.get("AGENTRT_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if path == "/threads" or path.startswith("/threads/"):
            scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                response = error_response(
                    401,
                    "unauthenticated",
                    "an 'Authorization: Bearer <token>' header is required",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                response = error_response(400, "bad_request", "invalid Content-Length header")
                await response(scope, receive, send)
                return
            if too_big:
                response = error_response(
                    413, "payload_too_large", f"the request body is larger than {self.max_bytes} bytes"
                )
                await response(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


# --------------------------------------------------------------------------------------------------------
# The FastAPI app

api = FastAPI(
    title="ray-agent-runtime",
    version="0.1.0",
    description=(
        "Durable chat threads on Ray. Each thread is an agent that asks its owner to approve purchases on "
        "another device (OpenID CIBA) and finishes the purchase by itself once approved. Every `/threads` "
        "route needs `Authorization: Bearer <JWT>` from the configured issuer."
    ),
)
api.add_middleware(RequestGuardMiddleware)

bearer_scheme = HTTPBearer(auto_error=False, description="A JWT from the configured issuer (audience: the agent API).")


@api.exception_handler(ChatError)
async def _chat_error(_request: Request, exc: ChatError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status_code == 401 else None
    return error_response(exc.status_code, exc.code, str(exc), headers)


@api.exception_handler(InvalidAgentIdError)
async def _bad_id(_request: Request, exc: InvalidAgentIdError) -> JSONResponse:
    return error_response(422, "invalid_thread_id", str(exc))


@api.exception_handler(AuthConfigError)
async def _misconfigured(_request: Request, exc: AuthConfigError) -> JSONResponse:
    logger.error("authorization is not configured: %s", exc)  # names the variable only, never a value
    return error_response(500, "server_misconfigured", str(exc))


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        problems.append({"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg"), "type": err.get("type")})
    if any(p["type"] == "json_invalid" for p in problems):
        return error_response(422, "invalid_json", "the request body is not valid JSON")
    summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems) or "invalid request"
    return JSONResponse({"error": "invalid_request", "detail": summary, "problems": problems}, status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, exc.detail, getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error: %s", type(exc).__name__)
    return error_response(500, "internal_error", "the request failed")


async def bearer_token(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> str:
    """The caller's raw bearer token (verified by the agent, not here)."""
    if credentials is None or not credentials.credentials.strip():
        raise ApiError(
            401,
            "unauthenticated",
            "an 'Authorization: Bearer <token>' header is required",
            {"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials.strip()


def thread_id_param(thread_id: str) -> str:
    return validate_agent_id(thread_id)


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "").lower()


def sse(event: str, data: Any, id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":"), default=str), event=event, id=id)


def event_id(event: ThreadEvent | Mapping[str, Any]) -> str:
    if isinstance(event, ThreadEvent):
        return f"{event.epoch}:{event.seq}"
    return f"{event['epoch']}:{event['seq']}"


def parse_resume_point(
    last_event_id: str | None, after: int | None, epoch: str | None
) -> tuple[int | None, str | None]:
    """`Last-Event-ID: <epoch>:<seq>` (or a bare seq), else `?after=&epoch=`; None = from now on."""
    if last_event_id:
        head, _, tail = last_event_id.strip().rpartition(":")
        try:
            return max(0, int(tail)), head or epoch
        except ValueError:
            raise ApiError(422, "invalid_request", "Last-Event-ID must be '<epoch>:<seq>'") from None
    return after, epoch


# --------------------------------------------------------------------------------------------------------
# Talking to the agents


class AgentGateway:
    """Handles to the thread and directory agents, with the runtime's and Ray's errors mapped to HTTP."""

    def __init__(self, max_cached: int = 10_000) -> None:
        self.max_cached = max_cached
        self._handles: OrderedDict[tuple[str, str, bool], Any] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _handle(self, kind: str, agent_id: str, create: bool) -> Any:
        from runtime import get_agent

        key = (kind, agent_id, create)
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            return handle
        if kind == "chat":
            from agents.chat import Chat as cls
        else:
            from agents.directory import ThreadDirectory as cls  # type: ignore[assignment]
        validate_agent_id(agent_id)
        try:  # the first handle of a storage root looks up (or starts) its actors: keep the event loop free
            handle = await asyncio.to_thread(get_agent, cls, agent_id, create=create)
        except RayError as exc:
            raise _unavailable(exc) from None
        self._handles[key] = handle
        while len(self._handles) > self.max_cached:
            self._handles.popitem(last=False)
        return handle

    async def chat(self, thread_id: str, *, create: bool = False) -> Any:
        """The thread's agent. Only creating or posting to a thread may create one (`create=True`): every
        other route on an unknown id is a 404 that starts nothing."""
        return await self._handle("chat", thread_id, create)

    async def directory(self, subject: str) -> Any:
        from agents.directory import directory_id_for

        return await self._handle("directory", directory_id_for(subject), True)

    async def call(self, handle: Any, method: str, *args: Any, _cancel_remote: bool = False, **kwargs: Any) -> Any:
        try:
            return await handle.invoke(method, *args, _cancel_remote=_cancel_remote, **kwargs)
        except (ChatError, InvalidAgentIdError, AuthConfigError):
            raise
        except AgentNotFoundError:
            raise ApiError(404, "thread_not_found", "no thread with this id") from None
        except AgentCapacityError as exc:
            retry = str(max(1, round(exc.retry_after)))
            detail = "every live thread is busy; retry shortly"
            raise ApiError(503, "at_capacity", detail, {"Retry-After": retry}) from None
        except RayError as exc:
            raise _unavailable(exc) from None

    async def poll(self, handle: Any, token: str, after: int, epoch: str | None, wait: float) -> dict[str, Any]:
        """One `poll_events` long-poll (up to `wait` s); cancelling it cancels the call on the agent too."""
        return await self.call(handle, "poll_events", token, after, epoch, wait, _cancel_remote=True)

    def background(self, awaitable: Awaitable[Any], what: str) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception as exc:  # best effort: never fails the request that started it
                logger.warning("%s failed: %s", what, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _unavailable(exc: BaseException) -> ApiError:
    logger.warning("agent unavailable: %s", type(exc).__name__)
    return ApiError(503, "agent_unavailable", "the thread's agent is unavailable; retry shortly", {"Retry-After": "1"})


def _dump(items: list[Any]) -> list[Any]:
    return [item.model_dump(mode="json") if isinstance(item, BaseModel) else item for item in items]


def _events_of(result: Mapping[str, Any]) -> list[ThreadEvent]:
    return [e if isinstance(e, ThreadEvent) else ThreadEvent.model_validate(e) for e in result.get("events", [])]


def _sse_headers() -> dict[str, str]:
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --------------------------------------------------------------------------------------------------------
# The deployment


@serve.deployment(name="AgentIngress", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class AgentIngress:
    """The Serve replica: stateless; all state lives in the agents."""

    def __init__(self) -> None:
        self.settings = IngressSettings()
        self.gateway = AgentGateway()
        self.replica = uuid.uuid4().hex[:8]
        self._jwt: JWTVerifier | None = None
        self._ping_mac_key: bytes | None = None
        self._start_runtime()

    async def _authenticate(self, token: str) -> dict[str, Any]:
        """Verify the bearer token here too, before any agent is created or called: the agents verify it
        again (they trust no one), but an unauthenticated request never costs the cluster an actor."""
        if self._jwt is None:  # the process's one verifier (one JWKS cache), as the agents use
            settings = AuthSettings()
            self._jwt = shared_verifier(settings.issuer, settings.require_api_audience())
        try:
            claims = await self._jwt.verify(token)
        except SigningKeysUnavailableError:
            raise ApiError(
                503, "authz_unavailable", "the issuer's signing keys cannot be fetched; retry", {"Retry-After": "5"}
            ) from None
        except InvalidTokenError as exc:
            raise ApiError(
                401,
                "unauthenticated",
                f"invalid token: {exc.reason}",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise ApiError(401, "unauthenticated", "the token has no subject", {"WWW-Authenticate": "Bearer"})
        return claims

    @staticmethod
    def _start_runtime() -> None:
        """Make sure the storage root's alarm scheduler and agent hosts run: after a cluster restart the
        threads waiting for approvals resume without waiting for someone to call them, and the first
        request after a deploy finds its host already started."""
        from runtime.registry import start_runtime

        try:
            start_runtime()
        except Exception as exc:  # handles still start them on first use
            logger.warning("could not start the agent runtime: %s", exc)

    # -- service -------------------------------------------------------------------------------------
    @api.get("/healthz", response_model=Health, tags=["service"])
    async def healthz(self) -> Health:
        return Health(ok=True, replica=self.replica, time=time.time())

    @api.get("/config", response_model=PublicConfig, tags=["service"])
    async def config(self, request: Request) -> PublicConfig:
        """What the web page and the CLI need to know: the issuer, and with the dev authorization server,
        where to sign in as a demo user and where the approval page ("the phone") is."""
        dev = self.settings.dev_base()
        approvals = self.settings.approvals_url or (f"{dev}/approvals" if dev else None)
        return PublicConfig(
            issuer=self.settings.public_issuer() or (dev + "/" if dev else None),
            audience=self.settings.audience,
            dev_login_url=str(request.base_url) + "dev/login" if dev else None,
            dev_authz_url=dev,
            approvals_url=approvals,
            demo_users=["alice", "bob"] if dev else [],
        )

    @api.post(
        "/dev/login",
        response_model=DevLoginResponse,
        responses={404: {"model": ErrorBody, "description": "No dev authorization server (or unknown user)."}},
        tags=["service"],
    )
    async def dev_login(self, body: DevLoginRequest) -> Response:
        """A demo user's access token from the dev authorization server (only when one is configured).

        The page signs in through here, same-origin, so the dev server needs no CORS and the page's
        Content-Security-Policy can stay `connect-src 'self'`."""
        dev = self.settings.dev_base()
        if not dev:
            raise ApiError(404, "not_found", "this server has no dev authorization server")
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                upstream = await http.post(f"{dev}/dev/login", json={"username": body.username})
        except httpx.HTTPError:
            raise ApiError(503, "authz_unavailable", "the dev authorization server does not answer") from None
        if upstream.status_code == 404:
            raise ApiError(404, "unknown_user", f"no demo user {body.username!r}")
        if upstream.status_code >= 400:
            raise ApiError(502, "authz_error", "the dev authorization server refused the login")
        return JSONResponse(upstream.json(), headers={"Cache-Control": "no-store"})

    @api.post(
        "/ciba/notify",
        status_code=204,
        responses={
            204: {"description": "The ping was accepted: the thread checks the approval now."},
            202: {"description": "Genuine, and queued for its thread (every live thread is busy): checked soon."},
            401: {"model": ErrorBody, "description": "Not a notification token of a pending approval."},
        },
        tags=["approvals"],
    )
    async def ciba_notify(self, body: CibaPing, request: Request) -> Response:
        """CIBA ping mode (CIBA Core 1.0 section 10.2): the provider's notification that the user decided.

        The bearer is the `client_notification_token` of one pending approval; it names the thread, which
        then polls the token endpoint at once (a ping alone never approves anything). An unknown, wrong or
        replayed token is 401 and wakes nothing."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        target = notification_target(self._ping_key(), token.strip()) if scheme.lower() == "bearer" else None
        refused = ApiError(401, "invalid_token", "not a valid notification token", {"WWW-Authenticate": "Bearer"})
        if target is None:  # not signed by us: refused here, no agent is woken
            raise refused
        try:
            chat = await self.gateway.chat(validate_agent_id(target.thread_id))
        except InvalidAgentIdError:
            raise refused from None
        delivery = asyncio.ensure_future(self.gateway.call(chat, "notify_ciba_ping", token.strip(), body.auth_req_id))
        delivery.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:  # a thread waiting for room (every live agent busy) still gets it; the provider need not wait
            accepted = await asyncio.wait_for(asyncio.shield(delivery), PING_ANSWER_SECONDS)
        except TimeoutError:
            return Response(status_code=202)
        except ApiError as exc:
            if exc.status == 503:
                raise
            raise refused from None
        if not accepted:
            raise refused
        return Response(status_code=204)

    def _ping_key(self) -> bytes:
        if self._ping_mac_key is None:
            self._ping_mac_key = ping_key(AuthSettings().require_encryption_key().get_secret_value())
        return self._ping_mac_key

    @api.get("/", include_in_schema=False)
    async def index(self) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=self._page_headers())

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        if name not in STATIC_FILES:
            raise ApiError(404, "not_found", "no such file")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    def _page_headers(self) -> dict[str, str]:
        csp = (
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
        return {
            "Cache-Control": "no-cache",
            "Content-Security-Policy": csp,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }

    # -- threads -------------------------------------------------------------------------------------
    @api.post(
        "/threads",
        status_code=201,
        response_model=ThreadCreated,
        responses={
            200: {"model": ThreadCreated, "description": "The caller already had this thread."},
            **CREATE_RESPONSES,
        },
        tags=["threads"],
    )
    async def create_thread(
        self, body: CreateThreadRequest | None = None, token: str = Depends(bearer_token)
    ) -> Response:
        """Create a thread (or open one of yours by id). The caller becomes its owner."""
        thread_id = validate_agent_id(body.thread_id) if body and body.thread_id is not None else str(uuid.uuid4())
        subject = (await self._authenticate(token))["sub"]
        entry = await self._open_thread(token, subject, thread_id)
        summary = {k: v for k, v in entry.items() if k != "created"}
        created = ThreadCreated(**summary, owner=subject, created=entry["created"])
        return JSONResponse(created.model_dump(mode="json"), status_code=201 if created.created else 200)

    async def _open_thread(self, token: str, subject: str, thread_id: str) -> dict[str, Any]:
        """Create-or-open a thread for the caller: first its place in their directory (where the per-user
        quota is checked, atomically), then the agent itself, which makes the caller its owner. Someone
        else's thread is refused by the agent (403) and its directory place given back."""
        directory = await self.gateway.directory(subject)
        entry = await self.gateway.call(directory, "add", token, thread_id, self.settings.max_threads_per_user)
        chat = await self.gateway.chat(thread_id, create=True)
        try:
            await self.gateway.call(chat, "claim", token)
        except NotOwnerError:
            if entry["created"]:  # given back before answering: the caller's list never shows it
                await self.gateway.call(directory, "remove", token, thread_id)
            raise
        return entry

    async def _call_posting(self, token: str, subject: str, thread_id: str, method: str, *args: Any) -> tuple[Any, Any]:
        """Call `method` on the thread; a thread that does not exist yet is created first (posting to a new
        id creates it, within the caller's quota). Returns the agent's handle and the result."""
        chat = await self.gateway.chat(thread_id)
        try:
            return chat, await self.gateway.call(chat, method, *args)
        except ApiError as exc:
            if exc.error != "thread_not_found":
                raise
        await self._open_thread(token, subject, thread_id)
        return chat, await self.gateway.call(chat, method, *args)

    @api.get("/threads", response_model=ThreadList, responses=ERROR_RESPONSES, tags=["threads"])
    async def list_threads(
        self, limit: int = Query(100, ge=1, le=500), token: str = Depends(bearer_token)
    ) -> ThreadList:
        """The caller's threads, most recently active first."""
        claims = await self._authenticate(token)
        directory = await self.gateway.directory(claims["sub"])
        rows = await self.gateway.call(directory, "list_threads", token, limit)
        return ThreadList(threads=[ThreadSummary(**row) for row in rows])

    @api.get("/threads/{thread_id}", response_model=ThreadDescription, responses=ERROR_RESPONSES, tags=["threads"])
    async def describe_thread(
        self, thread_id: str = Depends(thread_id_param), token: str = Depends(bearer_token)
    ) -> ThreadDescription:
        """The thread's owner, message count and last activity."""
        await self._authenticate(token)
        chat = await self.gateway.chat(thread_id)
        return ThreadDescription(**await self.gateway.call(chat, "describe", token))

    # -- messages ------------------------------------------------------------------------------------
    @api.post(
        "/threads/{thread_id}/messages",
        response_model=MessageList,
        responses={
            200: {
                "description": "The new messages; or, with `Accept: text/event-stream`, a stream of the turn's "
                "events then a final `done` event (`{thread_id, messages}`) or `failed` (`{error, detail}`).",
                "content": {"text/event-stream": {"schema": {"type": "string", "description": SSE_DESCRIPTION}}},
            },
            **CREATE_RESPONSES,
        },
        tags=["messages"],
    )
    async def send_message(
        self,
        request: Request,
        body: SendMessageRequest,
        thread_id: str = Depends(thread_id_param),
        token: str = Depends(bearer_token),
    ) -> Response:
        """Send a message and run the whole turn (the model, and any tools it calls)."""
        subject = (await self._authenticate(token))["sub"]
        content = body.content.strip()
        if not content:
            raise ApiError(422, "invalid_message", "message is empty")
        if len(content) > self.settings.max_message_chars:
            raise ApiError(
                422,
                "invalid_message",
                f"message is too long ({len(content)} characters; the limit is {self.settings.max_message_chars})",
            )
        if not wants_event_stream(request):
            _, messages = await self._call_posting(token, subject, thread_id, "send_message", token, content)
            self._note_activity(token, subject, thread_id, content)
            return JSONResponse({"thread_id": thread_id, "messages": _dump(messages)})
        # a first zero-wait poll: auth errors become HTTP errors here, before the stream starts
        chat, start = await self._call_posting(token, subject, thread_id, "poll_events", token, FAR_AFTER, None, 0.0)
        turn = asyncio.ensure_future(self.gateway.call(chat, "send_message", token, content))
        turn.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if the client left
        stream = self._turn_stream(
            chat, token, subject, thread_id, content, turn, start["epoch"], int(start["last_seq"])
        )
        return EventSourceResponse(stream, ping=self.settings.sse_ping_seconds, headers=_sse_headers())

    async def _turn_stream(
        self,
        chat: Any,
        token: str,
        subject: str,
        thread_id: str,
        content: str,
        turn: asyncio.Future[Any],
        epoch: str,
        after: int,
    ) -> AsyncIterator[ServerSentEvent]:
        poll: asyncio.Future[Any] | None = None
        try:
            while True:
                if poll is None:
                    wait = self.settings.poll_timeout
                    poll = asyncio.ensure_future(self.gateway.poll(chat, token, after, epoch, wait))
                await asyncio.wait({poll, turn}, return_when=asyncio.FIRST_COMPLETED)
                if poll.done():
                    result, poll = poll.result(), None
                elif turn.done():
                    poll.cancel()
                    poll = None
                    result = await self.gateway.poll(chat, token, after, epoch, 0.0)  # drain what is left
                else:
                    continue
                if result["epoch"] != epoch:
                    epoch = result["epoch"]
                    yield sse("reset", {"epoch": epoch, "reason": "the agent restarted; re-read the messages"})
                for event in _events_of(result):
                    after = max(after, event.seq)
                    yield sse(event.type, event.model_dump(mode="json"), event_id(event))
                if turn.done() and poll is None and not result.get("events"):
                    break
            try:
                messages = turn.result()
            except Exception as exc:
                status, code, detail = _error_payload(exc)
                yield sse("failed", {"error": code, "detail": detail, "status": status})
                return
            self._note_activity(token, subject, thread_id, content)
            yield sse("done", {"thread_id": thread_id, "messages": _dump(messages)})
        except (ChatError, ApiError) as exc:
            status, code, detail = _error_payload(exc)
            yield sse("failed", {"error": code, "detail": detail, "status": status})
        finally:
            if poll is not None and not poll.done():
                poll.cancel()

    def _note_activity(self, token: str, subject: str, thread_id: str, content: str) -> None:
        """Keep the caller's thread directory current (title, last activity); best effort, off the hot path."""

        async def touch() -> None:
            directory = await self.gateway.directory(subject)
            await self.gateway.call(directory, "touch", token, thread_id, content)

        self.gateway.background(touch(), "updating the thread directory")

    @api.get("/threads/{thread_id}/messages", response_model=MessageList, responses=ERROR_RESPONSES, tags=["messages"])
    async def get_messages(
        self, thread_id: str = Depends(thread_id_param), token: str = Depends(bearer_token)
    ) -> Response:
        """The whole thread in order (tool results follow the call that asked for them)."""
        await self._authenticate(token)
        chat = await self.gateway.chat(thread_id)
        messages = await self.gateway.call(chat, "get_messages", token)
        return JSONResponse({"thread_id": thread_id, "messages": _dump(messages)})

    # -- approvals -----------------------------------------------------------------------------------
    @api.get(
        "/threads/{thread_id}/interrupts", response_model=InterruptList, responses=ERROR_RESPONSES, tags=["approvals"]
    )
    async def get_interrupts(
        self, thread_id: str = Depends(thread_id_param), token: str = Depends(bearer_token)
    ) -> Response:
        """Tool calls waiting for the user: on their device (CIBA) or for an in-chat confirmation."""
        await self._authenticate(token)
        chat = await self.gateway.chat(thread_id)
        approvals = await self.gateway.call(chat, "get_pending_approvals", token)
        return JSONResponse({"thread_id": thread_id, "interrupts": _dump(approvals)})

    @api.post(
        "/threads/{thread_id}/tool-results",
        response_model=MessageList,
        responses={
            404: {"model": ErrorBody, "description": "No tool call with that id in this thread."},
            409: {"model": ErrorBody, "description": "The tool call is not waiting for a confirmation."},
            **ERROR_RESPONSES,
        },
        tags=["approvals"],
    )
    async def submit_tool_result(
        self, body: ToolResultRequest, thread_id: str = Depends(thread_id_param), token: str = Depends(bearer_token)
    ) -> Response:
        """Approve or deny a tool call waiting for an in-chat confirmation; the turn then continues."""
        await self._authenticate(token)
        chat = await self.gateway.chat(thread_id)
        messages = await self.gateway.call(chat, "submit_tool_result", token, body.tool_call_id, body.approved)
        return JSONResponse({"thread_id": thread_id, "messages": _dump(messages)})

    # -- live events ---------------------------------------------------------------------------------
    @api.get(
        "/threads/{thread_id}/events",
        responses={
            200: {"description": SSE_DESCRIPTION, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            **ERROR_RESPONSES,
        },
        response_class=Response,
        tags=["messages"],
    )
    async def events(
        self,
        request: Request,
        thread_id: str = Depends(thread_id_param),
        token: str = Depends(bearer_token),
        after: int | None = Query(None, ge=0, description="Replay events after this seq (same epoch)."),
        epoch: str | None = Query(None, max_length=64, description="The epoch `after` belongs to."),
    ) -> Response:
        """Everything that happens in the thread, live: a first `ready` event, then the thread's events.

        Resume with `Last-Event-ID` (sent automatically by EventSource) or `?after=<seq>&epoch=<epoch>`.
        A `reset` event means the agent restarted or events were missed: re-read `GET /messages`.
        """
        resume_after, resume_epoch = parse_resume_point(request.headers.get("last-event-id"), after, epoch)
        await self._authenticate(token)
        chat = await self.gateway.chat(thread_id)
        first = await self.gateway.poll(  # verifies the token: auth errors are HTTP errors, not stream events
            chat, token, FAR_AFTER if resume_after is None else resume_after, resume_epoch, 0.0
        )
        stream = self._event_stream(chat, token, thread_id, first, resume_after, resume_epoch)
        return EventSourceResponse(stream, ping=self.settings.sse_ping_seconds, headers=_sse_headers())

    async def _event_stream(
        self,
        chat: Any,
        token: str,
        thread_id: str,
        first: dict[str, Any],
        resume_after: int | None,
        resume_epoch: str | None,
    ) -> AsyncIterator[ServerSentEvent]:
        epoch = first["epoch"]
        last_seq = int(first["last_seq"])
        pending = _events_of(first)
        if resume_after is None:
            after = last_seq
        elif resume_epoch is not None and resume_epoch != epoch:
            after = 0  # the agent restarted since: everything of the new epoch is new to the client
        else:
            after = min(resume_after, last_seq)
        yield sse("ready", {"thread_id": thread_id, "epoch": epoch, "last_seq": last_seq})
        if resume_after is not None and (
            (resume_epoch is not None and resume_epoch != epoch) or (pending and pending[0].seq > resume_after + 1)
        ):
            yield sse("reset", {"epoch": epoch, "reason": "events were missed; re-read the messages"})
        backoff, recovering = 0.25, False
        try:
            while True:
                for event in pending:
                    if event.seq > after:
                        after = event.seq
                        yield sse(event.type, event.model_dump(mode="json"), event_id(event))
                try:
                    # right after an outage, ask without waiting: a restarted agent answers with its new
                    # epoch at once (a long-poll would wait for its first event)
                    wait = 0.0 if recovering else self.settings.poll_timeout
                    result = await self.gateway.poll(chat, token, after, epoch, wait)
                except ApiError as exc:
                    if exc.status != 503:
                        raise
                    # the agent is restarting (crash, node loss): keep the stream, try again; its new epoch
                    # then tells the client to re-read the messages
                    pending = []
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    chat = await self.gateway.chat(thread_id)
                    recovering = True
                    continue
                backoff, recovering = 0.25, False
                pending = _events_of(result)
                if result["epoch"] != epoch:
                    epoch, after = result["epoch"], 0
                    yield sse("reset", {"epoch": epoch, "reason": "the agent restarted; re-read the messages"})
                elif pending and pending[0].seq > after + 1:
                    yield sse("reset", {"epoch": epoch, "reason": "events were missed; re-read the messages"})
        except (ChatError, ApiError) as exc:
            status, code, detail = _error_payload(exc)
            yield sse("failed", {"error": code, "detail": detail, "status": status})


def build_app(
    env_vars: Mapping[str, str | None] | None = None,
    *,
    num_replicas: int | Literal["auto"] = 1,
    max_ongoing_requests: int = 1000,
) -> serve.Application:
    """The ingress application, its replicas started with `env_vars` added to their environment.

    Agents inherit their creator's environment, so `AUTH0_*`, `OPENAI_*`, `CHECKOUT_*`, `AGENT_*`
    given here reach the `Chat` actors the ingress creates.
    """
    options: dict[str, Any] = {"num_cpus": 0}
    env = {k: str(v) for k, v in (env_vars or {}).items() if v is not None}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return AgentIngress.options(
        num_replicas=num_replicas, max_ongoing_requests=max_ongoing_requests, ray_actor_options=options
    ).bind()


app = build_app()
"""The application with the environment of whoever deploys it (`serve run agentrt.ingress:app`)."""
