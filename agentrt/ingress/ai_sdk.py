"""The AI SDK's chat routes: what `useChat` with the `ai` package's `DefaultChatTransport` calls.

- `POST /api/chat`: the transport's request (`id` = the thread id, `messages`, `trigger`, `messageId`).
  The thread's stored history is the truth: only the last message is read. A user message runs a turn; an
  assistant message carrying approval answers (`approval-responded` tool parts, after the client's
  `addToolApprovalResponse`) answers those in-chat confirmations. The answer is the reply as a UI message
  stream (`agentrt.ingress.ui_messages`); while one of the reply's calls waits for the user's approval on
  another device, the stream stays open (a long-running tool, as the AI SDK sees it) and carries the tool's
  output and the answer once the approval comes.
- `GET /api/chat/{id}/stream`: the AI SDK's stream resumption (`useChat({resume: true})`): the thread's
  latest reply, replayed from its start, then live until it is finished; 204 when nothing is running.
- `GET /api/chat/{id}/messages`: the thread as `UIMessage[]`, for `useChat`'s initial messages.

Bearer auth as on every thread route (the transport's `headers`), the same owner rule, the same turn caps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from agentrt.ingress.access import Caller, ThreadAccess, bind_thread, caller, thread_access
from agentrt.ingress.errors import HttpProblem, error_payload
from agentrt.ingress.schemas import ERROR_RESPONSES, STREAM_RESPONSES, THREAD_ID_SCHEMA
from agentrt.ingress.settings import IngressSettings, settings_dependency
from agentrt.ingress.stream_slots import slots
from agentrt.ingress.streams import FAR_AFTER, events_of
from agentrt.ingress.threads import call_or_create, note_activity, take_turn
from agentrt.ingress.ui_messages import (
    Chunk,
    Reply,
    UIStream,
    replies,
    reply_id,
    tool_call_id_of_approval,
    ui_messages,
)
from agents.errors import ChatError
from agents.messages import ChatMessage, PendingApproval, checked_message_text, validate_message_id
from agents.settings import chat_settings
from runtime.backoff import exponential_delay

router = APIRouter(tags=["ai-sdk"])

UI_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "x-vercel-ai-ui-message-stream": "v1"}
IDLE_ANSWER_SECONDS = 120.0
"""How long a reply waits for the answer that follows a resolved approval before it finishes anyway (the
client's history still gets it: `GET /api/chat/{id}/messages`)."""


class UIMessageIn(BaseModel):
    """A `UIMessage` as the transport sends it (only the last one of a request is read)."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=256)
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]] = Field(max_length=2000)


class UIChatRequest(BaseModel):
    """The body `DefaultChatTransport` posts (with any `body` fields the client adds, ignored here)."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(description="The chat's id: the thread id.", json_schema_extra=THREAD_ID_SCHEMA)
    messages: list[UIMessageIn] = Field(min_length=1, max_length=100_000)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None


def _sse(chunks: list[Chunk]) -> list[ServerSentEvent]:
    return [ServerSentEvent(data=json.dumps(chunk, separators=(",", ":"), default=str)) for chunk in chunks]


def _error_chunk(exc: BaseException) -> Chunk:
    _, code, detail = error_payload(exc)
    return {"type": "error", "errorText": f"{code}: {detail}"}


def _user_text(message: UIMessageIn) -> str:
    text = "".join(str(part.get("text", "")) for part in message.parts if part.get("type") == "text")
    return checked_message_text(text, chat_settings().max_message_chars)


def _approval_answers(message: UIMessageIn) -> list[tuple[str, bool]]:
    """The approval answers in the client's copy of the reply: (tool call id, approved), each checked to name
    its own call (a forged approval id is refused here; the agent refuses one already answered)."""
    answers: list[tuple[str, bool]] = []
    for part in message.parts:
        if part.get("state") != "approval-responded":
            continue
        approval, call_id = part.get("approval") or {}, str(part.get("toolCallId") or "")
        approved = approval.get("approved") if isinstance(approval, dict) else None
        named = tool_call_id_of_approval(str(approval.get("id") or "")) if isinstance(approval, dict) else None
        if not call_id or named != call_id or not isinstance(approved, bool):
            raise HttpProblem(
                422, "invalid_approval", f"approval of tool call {call_id!r} is not one this thread asked"
            )
        answers.append((call_id, approved))
    if not answers:
        detail = "the last message is the assistant's and answers no approval; send a user message"
        raise HttpProblem(422, "invalid_request", detail)
    return answers


async def _check_waiting(thread: ThreadAccess, answers: list[tuple[str, bool]]) -> None:
    """Every answered call waits for an answer in this thread, else 409 before anything runs."""
    pending = [PendingApproval.model_validate(p) for p in await thread.call("get_pending_approvals")]
    waiting = {p.tool_call_id for p in pending if p.kind == "confirmation"}
    for call_id, _ in answers:
        if call_id not in waiting:
            detail = f"tool call {call_id!r} is not waiting for an answer in this thread (answered already?)"
            raise HttpProblem(409, "tool_call_not_awaiting", detail)


def _replies(stored: list[Any]) -> list[Reply]:
    return replies(ChatMessage.model_validate(m) for m in stored)


def _running(reply: Reply) -> bool:
    """Whether the reply is still being written: no answer yet, a call running or waiting on the user's
    device, or a step whose calls all have results (the model's next step is due)."""
    if reply.user is not None and not reply.answer:
        return True
    calls = [call for message in reply.answer for call in message.tool_calls or []]
    if any(call.state in ("call", "running", "pending-authorization") for call in calls):
        return True
    last_calls = reply.answer[-1].tool_calls or [] if reply.answer else []
    return bool(last_calls) and all(call.state == "result" for call in last_calls)


@dataclass
class _Cursor:
    """Where a reply's stream stands in its agent's events."""

    epoch: str
    after: int

    def moved_to(self, result: dict[str, Any]) -> bool:
        """Whether the agent restarted (a new epoch: its events are gone); the cursor then starts at its
        newest event."""
        if result["epoch"] == self.epoch:
            return False
        self.epoch, self.after = result["epoch"], int(result["last_seq"])
        return True

    def fed(self, result: dict[str, Any], reply: UIStream) -> list[Chunk]:
        """The chunks the events of a poll's `result` add to `reply`; the cursor moves past them."""
        chunks: list[Chunk] = []
        for event in events_of(result):
            self.after = max(self.after, event.seq)
            chunks += reply.feed(event)
        return chunks


async def _reply_stream(
    thread: ThreadAccess,
    reply: UIStream,
    start: dict[str, Any],
    turn: asyncio.Future[Any] | None,
    settings: IngressSettings,
    *,
    preface: list[Chunk],
    on_done: Callable[[], None] = lambda: None,
) -> AsyncIterator[ServerSentEvent]:
    """The reply's chunks: `preface`, then the turn's events while `turn` runs (the stored result fills in
    what the events missed), then, while the reply waits on the user's device, the events that finish it."""
    for event in _sse(preface):
        yield event
    cursor = _Cursor(start["epoch"], int(start["last_seq"]))
    try:
        if turn is not None:
            async for chunks in _during_turn(thread, reply, turn, cursor, settings):
                for event in _sse(chunks):
                    yield event
            try:
                messages = turn.result()
            except Exception as exc:
                yield _sse([_error_chunk(exc)])[0]
                return
            on_done()
            for event in _sse(reply.replay(ChatMessage.model_validate(m) for m in messages)):
                yield event
        async for chunks in _until_finished(thread, reply, cursor, settings):
            for event in _sse(chunks):
                yield event
        for event in _sse(reply.finish()):
            yield event
        yield ServerSentEvent(data="[DONE]")
    except (ChatError, HttpProblem) as exc:
        yield _sse([_error_chunk(exc)])[0]


async def _during_turn(
    thread: ThreadAccess, reply: UIStream, turn: asyncio.Future[Any], cursor: _Cursor, settings: IngressSettings
) -> AsyncIterator[list[Chunk]]:
    """The chunks of the turn's events until `turn` ends (`cursor` follows the events)."""
    poll: asyncio.Future[Any] | None = None
    try:
        while True:
            if poll is None:
                poll = asyncio.ensure_future(thread.next_events(cursor.after, cursor.epoch, settings.poll_timeout))
            await asyncio.wait({poll, turn}, return_when=asyncio.FIRST_COMPLETED)
            if poll.done():
                result, poll = poll.result(), None
            else:  # the turn ended: take what is left without waiting
                poll.cancel()
                poll = None
                result = await thread.next_events(cursor.after, cursor.epoch, 0.0)
            if cursor.moved_to(result):  # the agent restarted: the turn's stored result fills the gap
                continue
            yield cursor.fed(result, reply)
            if turn.done() and poll is None and not result.get("events"):
                return
    finally:
        if poll is not None and not poll.done():
            poll.cancel()


async def _until_finished(
    thread: ThreadAccess, reply: UIStream, cursor: _Cursor, settings: IngressSettings
) -> AsyncIterator[list[Chunk]]:
    """While the reply waits on the user's device (or for the answer that follows): its chunks as they
    come. An agent that restarts is re-read (its events are gone); one unavailable for a while is waited
    for, as `GET /events` does."""
    failures, quiet_since = 0, time.monotonic()
    while not reply.finished:
        if not reply.waiting and time.monotonic() - quiet_since > IDLE_ANSWER_SECONDS:
            return
        try:
            result = await thread.next_events(cursor.after, cursor.epoch, 0.0 if failures else settings.poll_timeout)
        except HttpProblem as exc:
            if exc.status_code != 503:
                raise
            failures += 1
            await asyncio.sleep(exponential_delay(failures, 0.25, 5.0))
            thread = await thread.reconnect()
            continue
        failures = 0
        if cursor.moved_to(result):
            stored = [r for r in _replies(await thread.call("get_messages")) if r.id == reply.response_id]
            yield reply.replay(stored[0].answer if stored else [])
            continue
        chunks = cursor.fed(result, reply)
        if chunks:
            quiet_since = time.monotonic()
            yield chunks


UI_STREAM_CONTENT = {"text/event-stream": {"schema": {"type": "string", "description": "UI message stream chunks."}}}


@router.post(
    "/api/chat",
    response_class=Response,
    responses={
        200: {
            "description": "The reply as an AI SDK UI message stream (`x-vercel-ai-ui-message-stream: v1`).",
            "content": UI_STREAM_CONTENT,
        },
        **STREAM_RESPONSES,
        409: {"description": "An approval answered twice, or a message id reused for other content."},
        429: {"description": "Too many turns or open streams."},
    },
)
async def chat(
    body: UIChatRequest,
    who: Caller = Depends(caller),
    settings: IngressSettings = Depends(settings_dependency),
) -> Response:
    """Send the chat's new message (or its approval answers) and stream the reply, as `useChat` expects."""
    if body.trigger == "regenerate-message":
        detail = "regenerating a reply is not supported: the thread's stored history is kept as it was"
        raise HttpProblem(422, "unsupported_trigger", detail)
    thread = await bind_thread(who, body.id)
    last = body.messages[-1]
    if last.role == "user":
        text, message_id = _user_text(last), validate_message_id(last.id)
        reply = UIStream(reply_id(message_id), approval_url=settings.approval_page(), user_message_id=message_id)
        preface: list[Chunk] = reply.start()
    elif last.role == "assistant":
        answers = _approval_answers(last)
        await _check_waiting(thread, answers)
        reply = UIStream(last.id, approval_url=settings.approval_page())
        stored = [r for r in _replies(await thread.call("get_messages")) if r.id == last.id]
        reply.replay(stored[0].answer if stored else [])  # what the client has already: its calls are this reply's
        preface = reply.start()
    else:
        raise HttpProblem(422, "invalid_request", "the last message must be the user's (or approval answers)")
    slots.take(
        who.subject,
        thread.thread_id,
        per_user=settings.max_streams_per_user,
        per_thread=settings.max_streams_per_thread,
    )
    done = take_turn(thread, settings)
    try:  # a first zero-wait poll: auth errors become HTTP errors here, before the stream starts
        start = await call_or_create(thread, settings, "poll_events", FAR_AFTER, None, 0.0)
    except BaseException:
        done()
        slots.give_back(who.subject, thread.thread_id)
        raise
    if last.role == "user":
        turn = asyncio.ensure_future(thread.call("send_message", text, message_id, idempotent=True))
        on_done = lambda: note_activity(thread, text)  # noqa: E731
    else:
        turn = asyncio.ensure_future(_answer_all(thread, answers))
        on_done = lambda: None  # noqa: E731
    turn.add_done_callback(lambda t: done() or t.cancelled() or t.exception())  # retrieved if the client left
    stream = _reply_stream(thread, reply, start, turn, settings, preface=preface, on_done=on_done)
    return EventSourceResponse(
        slots.held(stream, who.subject, thread.thread_id), ping=settings.sse_ping_seconds, headers=UI_STREAM_HEADERS
    )


async def _answer_all(thread: ThreadAccess, answers: list[tuple[str, bool]]) -> list[Any]:
    messages: list[Any] = []
    for call_id, approved in answers:
        messages += await thread.call("submit_tool_result", call_id, approved)
    return messages


@router.get(
    "/api/chat/{thread_id}/stream",
    response_class=Response,
    responses={
        200: {"description": "The latest reply, replayed then live.", "content": UI_STREAM_CONTENT},
        204: {"description": "Nothing is running in the thread."},
        **STREAM_RESPONSES,
    },
)
async def resume_stream(
    thread: ThreadAccess = Depends(thread_access), settings: IngressSettings = Depends(settings_dependency)
) -> Response:
    """The thread's latest reply, from its start and then live until it is finished (the AI SDK's stream
    resumption); 204 when nothing is running in the thread."""
    start = await thread.next_events(FAR_AFTER, None, 0.0)
    latest = _replies(await thread.call("get_messages"))[-1:]
    if not latest or not _running(latest[0]):
        return Response(status_code=204)
    who = thread.caller.subject
    reply = UIStream(latest[0].id, approval_url=settings.approval_page(), live_tokens=False)
    preface = reply.start() + reply.replay(latest[0].answer)
    reply.answer_due = not reply.waiting
    slots.take(
        who, thread.thread_id, per_user=settings.max_streams_per_user, per_thread=settings.max_streams_per_thread
    )
    stream = _reply_stream(thread, reply, start, None, settings, preface=preface)
    return EventSourceResponse(
        slots.held(stream, who, thread.thread_id), ping=settings.sse_ping_seconds, headers=UI_STREAM_HEADERS
    )


class UIMessageList(BaseModel):
    thread_id: str
    messages: list[dict[str, Any]] = Field(
        description="`UIMessage[]`, as the `ai` package's `validateUIMessages` takes."
    )


@router.get("/api/chat/{thread_id}/messages", response_model=UIMessageList, responses=ERROR_RESPONSES)
async def chat_messages(
    thread: ThreadAccess = Depends(thread_access), settings: IngressSettings = Depends(settings_dependency)
) -> Response:
    """The thread as `UIMessage[]` (`{thread_id, messages}`), for `useChat`'s initial `messages`."""
    stored = [ChatMessage.model_validate(m) for m in await thread.call("get_messages")]
    return JSONResponse({"thread_id": thread.thread_id, "messages": ui_messages(stored, settings.approval_page())})
