"""The thread routes: create, list, describe, messages (JSON or a stream of the turn), approvals, events.

Each starts from the `caller` or `thread_access` dependency (the token verified, the thread's agent bound)
and is a call or two on the agent; what the agent refuses comes back as its typed error, mapped to JSON.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from agentrt.ingress.access import Caller, ThreadAccess, caller, thread_access
from agentrt.ingress.errors import HttpProblem
from agentrt.ingress.gateway import gateway
from agentrt.ingress.schemas import (
    CREATE_RESPONSES,
    ERROR_RESPONSES,
    SSE_DESCRIPTION,
    SSE_EVENT_SCHEMA,
    STREAM_RESPONSES,
    CreateThreadRequest,
    ErrorBody,
    InterruptList,
    MessageList,
    SendMessageRequest,
    StopResult,
    ThreadCreated,
    ThreadDescription,
    ThreadList,
    ThreadSummary,
    ToolResultRequest,
)
from agentrt.ingress.settings import IngressSettings, settings_dependency
from agentrt.ingress.stream_slots import slots
from agentrt.ingress.streams import FAR_AFTER, SSE_HEADERS, dump, parse_resume_point, thread_stream, turn_stream
from agentrt.ingress.turn_limits import turn_limits
from agents.errors import NotOwnerError
from agents.messages import checked_message_text
from agents.settings import chat_settings
from runtime import validate_agent_id

router = APIRouter()


async def open_thread(who: Caller, thread_id: str, settings: IngressSettings) -> dict[str, Any]:
    """Create-or-open a thread for the caller: first its place in their directory (where the per-user quota
    is checked, atomically), then the agent itself, which makes the caller its owner. Someone else's thread
    is refused by the agent (403) and its directory place given back before the answer."""
    directory = await gateway.directory(who.subject)
    entry = await gateway.call(directory, "add", who.token, thread_id, settings.max_threads_per_user, idempotent=True)
    recent_touches.forget(who.subject, thread_id)
    chat = await gateway.thread(thread_id, create=True)
    try:
        await gateway.call(chat, "claim", who.token, idempotent=True)
    except NotOwnerError:
        if entry["created"]:
            await gateway.call(directory, "remove", who.token, thread_id, idempotent=True)
        raise
    return entry


def take_turn(thread: ThreadAccess, settings: IngressSettings) -> Any:
    """A turn of the caller's counted in (`turn_limits`), or 429; call the result when the turn ends."""
    return turn_limits.take(
        thread.caller.subject, per_minute=settings.max_turns_per_minute, concurrent=settings.max_concurrent_turns
    )


async def call_or_create(
    thread: ThreadAccess, settings: IngressSettings, method: str, *args: Any, idempotent: bool = False
) -> Any:
    """`thread.call(method, *args)`; a thread that does not exist yet is created first (posting to a new id
    creates it, within the caller's quota)."""
    try:
        return await thread.call(method, *args, idempotent=idempotent)
    except HttpProblem as exc:
        if exc.error != "thread_not_found":
            raise
    await open_thread(thread.caller, thread.thread_id, settings)
    return await thread.call(method, *args, idempotent=idempotent)


class RecentTouches:
    """When this replica last noted activity in each thread in its owner's directory.

    A thread's last activity is kept to within `every` seconds (the list's order, "active 2 minutes ago"):
    a turn sooner than that after the last one noted costs no call to the directory, which was one actor
    call, a token check and a write transaction on the directory's host for every turn. The first turn of
    a thread (its title) and the first after a quiet spell are always noted; at most `limit` threads are
    remembered (the oldest forgotten first)."""

    def __init__(self, every: float = 10.0, limit: int = 10_000) -> None:
        self.every = every
        self.limit = limit
        self._noted: OrderedDict[tuple[str, str], float] = OrderedDict()

    def due(self, subject: str, thread_id: str) -> bool:
        noted = self._noted.get((subject, thread_id))
        return noted is None or time.monotonic() - noted >= self.every

    def noted(self, subject: str, thread_id: str) -> None:
        self._noted[(subject, thread_id)] = time.monotonic()
        self._noted.move_to_end((subject, thread_id))
        while len(self._noted) > self.limit:
            self._noted.popitem(last=False)

    def forget(self, subject: str, thread_id: str) -> None:
        """The thread left the directory (deleted) or joined it again: its next turn is noted."""
        self._noted.pop((subject, thread_id), None)


recent_touches = RecentTouches()


def note_activity(thread: ThreadAccess, content: str) -> None:
    """Keep the caller's thread directory current (title, last activity; see `RecentTouches`); best effort,
    off the hot path."""
    subject, thread_id = thread.caller.subject, thread.thread_id
    if not recent_touches.due(subject, thread_id):
        return

    async def touch() -> None:
        directory = await gateway.directory(subject)
        await gateway.call(directory, "touch", thread.caller.token, thread_id, content)
        recent_touches.noted(subject, thread_id)

    gateway.background(touch(), "updating the thread directory")


async def messages_of_turn(thread: ThreadAccess, settings: IngressSettings, method: str, *args: Any) -> Response:
    """`thread.call(method, *args)` as one of the caller's counted turns (`take_turn`); its new messages."""
    done = take_turn(thread, settings)
    try:
        messages = await thread.call(method, *args)
    finally:
        done()
    return JSONResponse({"thread_id": thread.thread_id, "messages": dump(messages)})


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "").lower()


@router.post(
    "/threads",
    status_code=201,
    response_model=ThreadCreated,
    responses={200: {"model": ThreadCreated, "description": "The caller already had this thread."}, **CREATE_RESPONSES},
    tags=["threads"],
)
async def create_thread(
    body: CreateThreadRequest | None = None,
    who: Caller = Depends(caller),
    settings: IngressSettings = Depends(settings_dependency),
) -> Response:
    """Create a thread (or open one of yours by id). The caller becomes its owner."""
    thread_id = validate_agent_id(body.thread_id) if body and body.thread_id is not None else str(uuid.uuid4())
    entry = await open_thread(who, thread_id, settings)
    summary = {k: v for k, v in entry.items() if k != "created"}
    created = ThreadCreated(**summary, owner=who.subject, created=entry["created"])
    return JSONResponse(created.model_dump(mode="json"), status_code=201 if created.created else 200)


@router.get("/threads", response_model=ThreadList, responses=ERROR_RESPONSES, tags=["threads"])
async def list_threads(limit: int = Query(100, ge=1, le=500), who: Caller = Depends(caller)) -> ThreadList:
    """The caller's threads, most recently active first."""
    directory = await gateway.directory(who.subject)
    rows = await gateway.call(directory, "list_threads", who.token, limit)
    return ThreadList(threads=[ThreadSummary(**row) for row in rows])


@router.get("/threads/{thread_id}", response_model=ThreadDescription, responses=ERROR_RESPONSES, tags=["threads"])
async def describe_thread(thread: ThreadAccess = Depends(thread_access)) -> ThreadDescription:
    """The thread's owner, message count and last activity."""
    return ThreadDescription(**await thread.call("describe"))


@router.delete(
    "/threads/{thread_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted."}, **ERROR_RESPONSES},
    tags=["threads"],
)
async def delete_thread(thread: ThreadAccess = Depends(thread_access)) -> Response:
    """Delete one of your threads: its calls waiting for your approval are withdrawn (approving them later
    buys nothing), then its messages, credentials, schedules and its place in your thread list are removed.
    Its id answers 404 afterwards, and may be used again for a new thread."""
    await thread.call("delete_thread")
    directory = await gateway.directory(thread.caller.subject)
    await gateway.call(directory, "remove", thread.caller.token, thread.thread_id, idempotent=True)
    recent_touches.forget(thread.caller.subject, thread.thread_id)
    return Response(status_code=204)


@router.post(
    "/threads/{thread_id}/messages",
    response_model=MessageList,
    responses={
        200: {
            "description": "The new messages; or, with `Accept: text/event-stream`, a stream of the turn's "
            "events then a final `done` event (`{thread_id, messages}`) or `failed` (`{error, detail}`).",
            "content": {"text/event-stream": {"schema": {**SSE_EVENT_SCHEMA, "description": SSE_DESCRIPTION}}},
        },
        **CREATE_RESPONSES,
    },
    tags=["messages"],
)
async def send_message(
    request: Request,
    body: SendMessageRequest,
    thread: ThreadAccess = Depends(thread_access),
    settings: IngressSettings = Depends(settings_dependency),
) -> Response:
    """Send a message and run the whole turn (the model, and any tools it calls)."""
    content = checked_message_text(body.content, chat_settings().max_message_chars)
    # the message's own id makes resending it harmless: the gateway resends it if the agent's host crashes
    message_id = body.message_id or f"msg-{uuid.uuid4().hex}"
    done = take_turn(thread, settings)
    if not wants_event_stream(request):
        try:
            messages = await call_or_create(thread, settings, "send_message", content, message_id, idempotent=True)
        finally:
            done()
        note_activity(thread, content)
        return JSONResponse({"thread_id": thread.thread_id, "messages": dump(messages)})
    try:  # a first zero-wait poll: auth errors become HTTP errors here, before the stream starts
        start = await call_or_create(thread, settings, "poll_events", FAR_AFTER, None, 0.0)
    except BaseException:
        done()
        raise
    turn = asyncio.ensure_future(thread.call("send_message", content, message_id, idempotent=True))
    turn.add_done_callback(lambda t: done() or t.cancelled() or t.exception())  # retrieved if the client left
    stream = turn_stream(thread, turn, start, settings.poll_timeout, lambda: note_activity(thread, content))
    return EventSourceResponse(stream, ping=settings.sse_ping_seconds, headers=SSE_HEADERS)


@router.get("/threads/{thread_id}/messages", response_model=MessageList, responses=ERROR_RESPONSES, tags=["messages"])
async def get_messages(thread: ThreadAccess = Depends(thread_access)) -> Response:
    """The whole thread in order (tool results follow the call that asked for them)."""
    return JSONResponse({"thread_id": thread.thread_id, "messages": dump(await thread.call("get_messages"))})


@router.post("/threads/{thread_id}/stop", response_model=StopResult, responses=ERROR_RESPONSES, tags=["messages"])
async def stop_answer(thread: ThreadAccess = Depends(thread_access)) -> StopResult:
    """Stop the answer under way (the AI SDK's `stop()` only drops the client's connection; this stops the
    turn): the model's text so far is kept, marked `stopped`; tools not started do not run; a tool already
    running (a purchase) finishes and is recorded. Approvals waiting on the user's device go on."""
    return StopResult(thread_id=thread.thread_id, stopped=await thread.call("stop"))


@router.get(
    "/threads/{thread_id}/interrupts", response_model=InterruptList, responses=ERROR_RESPONSES, tags=["approvals"]
)
async def get_interrupts(thread: ThreadAccess = Depends(thread_access)) -> Response:
    """Tool calls waiting for the user: on their device (CIBA) or for an in-chat confirmation."""
    approvals = await thread.call("get_pending_approvals")
    return JSONResponse({"thread_id": thread.thread_id, "interrupts": dump(approvals)})


@router.delete(
    "/threads/{thread_id}/interrupts/{tool_call_id}",
    response_model=MessageList,
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorBody, "description": "No thread with that id, or no tool call with that id in it."},
        409: {"model": ErrorBody, "description": "The tool call is not waiting for an approval (decided already)."},
    },
    tags=["approvals"],
)
async def withdraw_approval(
    tool_call_id: str = Path(description="The waiting call's id.", max_length=256),
    thread: ThreadAccess = Depends(thread_access),
    settings: IngressSettings = Depends(settings_dependency),
) -> Response:
    """Withdraw a call that waits for the user's approval on their device: it ends "cancelled by the user",
    its checks stop, and an approval that comes later is ignored (nothing is bought). The model then
    answers: the new messages."""
    return await messages_of_turn(thread, settings, "withdraw_approval", tool_call_id)


@router.post(
    "/threads/{thread_id}/tool-results",
    response_model=MessageList,
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorBody, "description": "No thread with that id, or no tool call with that id in it."},
        409: {"model": ErrorBody, "description": "The tool call is not waiting for a confirmation."},
    },
    tags=["approvals"],
)
async def submit_tool_result(
    body: ToolResultRequest,
    thread: ThreadAccess = Depends(thread_access),
    settings: IngressSettings = Depends(settings_dependency),
) -> Response:
    """Approve or deny a tool call waiting for an in-chat confirmation; the turn then continues."""
    return await messages_of_turn(thread, settings, "submit_tool_result", body.tool_call_id, body.approved)


@router.get(
    "/threads/{thread_id}/events",
    responses={
        200: {"description": SSE_DESCRIPTION, "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **STREAM_RESPONSES,
    },
    response_class=Response,
    tags=["messages"],
)
async def events(
    request: Request,
    after: int | None = Query(None, ge=0, description="Replay events after this seq (same epoch)."),
    epoch: str | None = Query(None, max_length=64, description="The epoch `after` belongs to."),
    thread: ThreadAccess = Depends(thread_access),
    settings: IngressSettings = Depends(settings_dependency),
) -> Response:
    """Everything that happens in the thread, live: a first `ready` event, then the thread's events.

    Resume with `Last-Event-ID` (sent automatically by EventSource) or `?after=<seq>&epoch=<epoch>`.
    A `reset` event means the agent restarted or events were missed: re-read `GET /messages`.
    """
    resume_after, resume_epoch = parse_resume_point(request.headers.get("last-event-id"), after, epoch)
    # the first poll verifies the token in the agent: its errors are HTTP errors, not stream events
    first = await thread.next_events(FAR_AFTER if resume_after is None else resume_after, resume_epoch, 0.0)
    who = thread.caller.subject
    slots.take(
        who, thread.thread_id, per_user=settings.max_streams_per_user, per_thread=settings.max_streams_per_thread
    )
    stream = slots.held(
        thread_stream(thread, first, resume_after, resume_epoch, settings.poll_timeout), who, thread.thread_id
    )
    return EventSourceResponse(stream, ping=settings.sse_ping_seconds, headers=SSE_HEADERS)
