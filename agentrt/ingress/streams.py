"""Server-sent event streams, built on the agent's `poll_events` long-polls.

- `turn_stream`: the events of one turn while it runs (`POST /messages` with `Accept: text/event-stream`),
  then `done` with the new messages, or `failed`.
- `thread_stream`: everything that happens in a thread (`GET /events`), resumable with `Last-Event-ID`
  (`<epoch>:<seq>`). An agent that restarted has a new epoch: the stream says `reset` (re-read the
  messages) and goes on; an agent unavailable for a while (crash, node loss) keeps the stream open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from agentrt.ingress.access import ThreadAccess
from agentrt.ingress.errors import HttpProblem, error_payload
from agents.errors import ChatError
from agents.messages import ThreadEvent
from runtime.backoff import exponential_delay

FAR_AFTER = 2**62
"""A seq "after everything": asks an agent for its epoch and last seq without waiting."""

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any, id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":"), default=str), event=event, id=id)


def event_id(event: ThreadEvent) -> str:
    return f"{event.epoch}:{event.seq}"


def dump(items: list[Any]) -> list[Any]:
    return [item.model_dump(mode="json") if isinstance(item, BaseModel) else item for item in items]


def events_of(result: Mapping[str, Any]) -> list[ThreadEvent]:
    return [e if isinstance(e, ThreadEvent) else ThreadEvent.model_validate(e) for e in result.get("events", [])]


def parse_resume_point(
    last_event_id: str | None, after: int | None, epoch: str | None
) -> tuple[int | None, str | None]:
    """`Last-Event-ID: <epoch>:<seq>` (or a bare seq), else `?after=&epoch=`; None = from now on."""
    if last_event_id:
        head, _, tail = last_event_id.strip().rpartition(":")
        try:
            return max(0, int(tail)), head or epoch
        except ValueError:
            raise HttpProblem(422, "invalid_request", "Last-Event-ID must be '<epoch>:<seq>'") from None
    return after, epoch


def _failed(exc: BaseException) -> ServerSentEvent:
    status, code, detail = error_payload(exc)
    return sse("failed", {"error": code, "detail": detail, "status": status})


def _restarted(epoch: str) -> ServerSentEvent:
    return sse("reset", {"epoch": epoch, "reason": "the agent restarted; re-read the messages"})


def _missed(epoch: str) -> ServerSentEvent:
    return sse("reset", {"epoch": epoch, "reason": "events were missed; re-read the messages"})


async def turn_stream(
    thread: ThreadAccess,
    turn: asyncio.Future[Any],
    start: Mapping[str, Any],
    poll_timeout: float,
    on_done: Callable[[], None],
) -> AsyncIterator[ServerSentEvent]:
    """The turn's events as they happen, from the `start` snapshot on; `done` (after `on_done()`) or
    `failed` when the turn ends."""
    epoch, after = start["epoch"], int(start["last_seq"])
    poll: asyncio.Future[Any] | None = None
    try:
        while True:
            if poll is None:
                poll = asyncio.ensure_future(thread.next_events(after, epoch, poll_timeout))
            await asyncio.wait({poll, turn}, return_when=asyncio.FIRST_COMPLETED)
            if poll.done():
                result, poll = poll.result(), None
            else:  # the turn ended: stop waiting, and take what is left
                poll.cancel()
                poll = None
                result = await thread.next_events(after, epoch, 0.0)
            if result["epoch"] != epoch:
                epoch = result["epoch"]
                yield _restarted(epoch)
            for event in events_of(result):
                after = max(after, event.seq)
                yield sse(event.type, event.model_dump(mode="json"), event_id(event))
            if turn.done() and poll is None and not result.get("events"):
                break
        try:
            messages = turn.result()
        except Exception as exc:
            yield _failed(exc)
            return
        on_done()
        yield sse("done", {"thread_id": thread.thread_id, "messages": dump(messages)})
    except (ChatError, HttpProblem) as exc:
        yield _failed(exc)
    finally:
        if poll is not None and not poll.done():
            poll.cancel()


def _start_after(first: Mapping[str, Any], resume_after: int | None, resume_epoch: str | None) -> int:
    """Where a stream starts: now, after the client's last event, or (new epoch) at the beginning."""
    last_seq = int(first["last_seq"])
    if resume_after is None:
        return last_seq
    if resume_epoch is not None and resume_epoch != first["epoch"]:
        return 0  # the agent restarted since: everything of the new epoch is new to the client
    return min(resume_after, last_seq)


def _resume_gap(first: Mapping[str, Any], pending: list[ThreadEvent], after: int | None, epoch: str | None) -> bool:
    """Whether the client missed events it cannot be given (another epoch, or events dropped)."""
    if after is None:
        return False
    return (epoch is not None and epoch != first["epoch"]) or bool(pending and pending[0].seq > after + 1)


async def thread_stream(
    thread: ThreadAccess,
    first: Mapping[str, Any],
    resume_after: int | None,
    resume_epoch: str | None,
    poll_timeout: float,
) -> AsyncIterator[ServerSentEvent]:
    """`ready`, then the thread's events for as long as the client listens."""
    epoch = first["epoch"]
    pending = events_of(first)
    after = _start_after(first, resume_after, resume_epoch)
    yield sse("ready", {"thread_id": thread.thread_id, "epoch": epoch, "last_seq": int(first["last_seq"])})
    if _resume_gap(first, pending, resume_after, resume_epoch):
        yield _missed(epoch)
    failures = 0
    try:
        while True:
            for event in pending:
                if event.seq > after:
                    after = event.seq
                    yield sse(event.type, event.model_dump(mode="json"), event_id(event))
            try:
                # right after an outage, ask without waiting: a restarted agent answers with its new epoch at
                # once (a long-poll would wait for its first event)
                result = await thread.next_events(after, epoch, 0.0 if failures else poll_timeout)
            except HttpProblem as exc:
                if exc.status_code != 503:
                    raise
                # the agent is restarting (crash, node loss): keep the stream and try again; its new epoch then
                # tells the client to re-read the messages
                pending, failures = [], failures + 1
                await asyncio.sleep(exponential_delay(failures, 0.25, 5.0))
                thread = await thread.reconnect()
                continue
            failures = 0
            pending = events_of(result)
            if result["epoch"] != epoch:
                epoch, after = result["epoch"], 0
                yield _restarted(epoch)
            elif pending and pending[0].seq > after + 1:
                yield _missed(epoch)
    except (ChatError, HttpProblem) as exc:
        yield _failed(exc)
