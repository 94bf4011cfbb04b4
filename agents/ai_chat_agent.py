"""`AIChatAgent`: a durable chat thread that talks to any OpenAI-compatible model and runs tools.

Messages and tool calls are persisted in the agent's SQLite file; a turn appends the user message, runs
the LLM tool loop (`max_steps`), streams tokens to watchers, and returns the new messages. A tool call
that must wait (CIBA approval on the user's device, or an in-chat confirmation) is recorded with its
state and the turn ends; when it is resolved later, its result is recorded and the loop continues, so the
final answer arrives without another user message.

Access control is a pair of hooks every public method goes through: `authenticate(token)` and
`authorize(claims, action)`. They allow everything here; `AuthAgent` and `OwnedAgent` override them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

from openai import APIError, AsyncOpenAI
from openai import APITimeoutError as OpenAITimeout

from agents.compaction import COMPACTION_DELAY_SECONDS, NEXT_STEP_DELAY_SECONDS, compaction_request, request_overhead
from agents.errors import (
    InvalidMessageError,
    MessageIdReusedError,
    ToolCallNotAwaitingError,
    TurnInProgressError,
    UnknownToolCallError,
)
from agents.events import EventLog
from agents.messages import (
    APPROVED_IN_CHAT,
    CONTINUES,
    DENIED_IN_CHAT,
    STOPPED,
    WAITING_FOR_USER,
    ChatMessage,
    PendingApproval,
    ThreadEvent,
    ToolCall,
    ToolRetry,
    checked_message_text,
    validate_message_id,
)
from agents.metrics import MODEL_CALL_SECONDS, MODEL_ERRORS, TOOL_ERRORS, TOOL_RETRIES
from agents.model_context import ModelContext, bounded_context, preamble, wire_size
from agents.model_stream import complete_text, shared_llm, stream_completion
from agents.retention import Retention
from agents.settings import ChatSettings, OverlapPolicy, chat_settings
from agents.thread_store import CHAT_MIGRATIONS, TURN_IN_PROGRESS, ThreadStore
from runtime import Agent, internal, public, read, turn
from runtime.backoff import exponential_delay
from tools.base import OutcomeUnknownError, Tool, ToolContext, ToolError, TransientToolError
from tools.ciba.interrupts import AsyncAuthorizationInterrupt

logger = logging.getLogger("agents.chat")

DENIED_CONFIRMATION_TEXT = "The user denied this action."
RETENTION_CALLBACK = "expire_if_idle"
STOPPED_TEXT = "Not run: the user stopped the answer before this call."
TOO_MANY_CALLS_TEXT = "Not run: at most {cap} tool calls are run per answer. Ask for the rest in another step."
TOOL_RETRY_BASE_SECONDS = 1.0
TOOL_RETRY_MAX_SECONDS = 60.0


class AIChatAgent(Agent):
    """A chat thread: persisted messages, an LLM tool loop through `openai.AsyncOpenAI`, live events."""

    tool_retry_limit: ClassVar[int] = 20
    """Runs of a tool call after transient failures (`TransientToolError`) before it ends as an error."""

    context_budget_chars: ClassVar[int | None] = None
    """The most one model request carries, in characters; None: `CHAT_CONTEXT_BUDGET_CHARS`. Set it to what
    the class's model takes (about 3 characters per token of its context window, less its answer)."""

    overlapping_messages: ClassVar[OverlapPolicy | None] = None
    """A message sent while the thread answers another: `queue`, `reject` or `interrupt` (see
    `agents.settings.OverlapPolicy`); None: `CHAT_OVERLAPPING_MESSAGES` (default `queue`)."""

    retention_days: ClassVar[float | None] = None
    """Delete the thread once idle this many days; None: `CHAT_RETENTION_DAYS` (unset: kept until deleted)."""

    migrations = CHAT_MIGRATIONS
    _thread_store: ThreadStore | None = None

    @property
    def thread_store(self) -> ThreadStore:
        """The thread's messages and tool calls (typed; the SQL lives there)."""
        if self._thread_store is None:
            self._thread_store = ThreadStore(self.storage)
        return self._thread_store

    migration_scope = "agents.AIChatAgent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: ChatSettings = chat_settings()
        self.events = EventLog()
        self._llm: AsyncOpenAI | None = None
        self._tools: dict[str, Tool] | None = None
        self._schemas: list[dict[str, Any]] | None = None
        self._schemas_size = 0
        self._retention = Retention(RETENTION_CALLBACK)
        self._answering = False
        """Whether the model loop runs (a user's turn, or the answer after an approval): what `stop` stops."""
        self._stop_requested = False
        self._model_call: asyncio.Future[Any] | None = None
        self._window: tuple[int, int | None] | None = None
        """(the summary's last message, the window's first) of the last context built; the window's first is
        None when the window holds the whole thread."""

    # -- hooks for subclasses and mixins -----------------------------------------------------------
    @internal
    def build_tools(self) -> list[Tool]:
        """The tools this agent offers the model (none here)."""
        return []

    @property
    def tools(self) -> dict[str, Tool]:
        if self._tools is None:
            self._tools = {tool.name: tool for tool in self.build_tools()}
        return self._tools

    @internal
    async def authenticate(self, token: str | None) -> dict[str, Any]:
        """Verify the caller's credentials; return their claims. Open access here."""
        return {}

    @internal
    async def authorize(self, claims: dict[str, Any], action: str) -> None:
        """Decide whether the caller may perform `action` on this thread. Allowed here."""

    @internal
    async def get_owner(self) -> str | None:
        """The user the thread belongs to (the CIBA user for its tools). None without `OwnedAgent`."""
        return None

    @internal
    async def on_authorization_interrupt(self, call: ToolCall, interrupt: AsyncAuthorizationInterrupt) -> None:
        """A tool call now waits for an approval on the user's device. `AsyncUserConfirmationResumer`
        schedules the checks; without it the call waits until `resume_tool_call` is called."""

    def llm(self) -> AsyncOpenAI:
        """The model client: one per process and configuration, shared by the agents of a host (one
        connection pool, nothing rebuilt on activation)."""
        if self._llm is None:
            self._llm = shared_llm(
                self.settings.openai_base_url,
                self.settings.openai_api_key.get_secret_value(),
                self.settings.openai_timeout,
            )
        return self._llm

    @internal
    async def check_access(self, token: str | None, action: str) -> dict[str, Any]:
        claims = await self.authenticate(token)
        await self.authorize(claims, action)
        return claims

    # -- public API --------------------------------------------------------------------------------
    @public
    @turn
    async def send_message(self, token: str | None, content: str, message_id: str | None = None) -> list[ChatMessage]:
        """Run one turn: append the user's message, run the tool loop, return the new messages.

        With the sender's own `message_id`, sending it again is harmless: a message the thread already has
        is not appended twice; its turn is finished if a crash cut it short, and its messages are returned
        (so a client, or the ingress, may resend after a lost answer)."""
        await self.check_access(token, "send_message")
        text = self._validate_content(content)
        if message_id is not None:
            validate_message_id(message_id)
        first_seq, seen = await self.thread_store.before_turn(message_id)
        if seen is not None:
            return await self._replayed_turn(message_id, text, *seen)
        await self._start_turn(text, message_id)
        if not await self._run_llm_loop(ends_turn=True):
            await self.storage.delete(TURN_IN_PROGRESS)
        self.events.emit("turn_end")
        return await self._messages_after(first_seq)

    async def _replayed_turn(
        self, message_id: str, text: str, seq: int, role: str, content: str | None
    ) -> list[ChatMessage]:
        if role != "user" or content != text:
            raise MessageIdReusedError(f"message {message_id!r} was already sent with other content")
        if await self.storage.get(TURN_IN_PROGRESS) is not None:
            await self.recover_turn()  # the crash that lost the answer also cut the turn short: finish it now
        return await self._messages_after(seq - 1)

    @public
    @read
    async def get_messages(self, token: str | None) -> list[ChatMessage]:
        """The whole thread in order, tool results after the call that asked for them."""
        await self.check_access(token, "get_messages")
        return await self._messages_after(0)

    @public
    @read
    async def get_pending_approvals(self, token: str | None) -> list[PendingApproval]:
        """Tool calls waiting for the user (on their device, or for a confirmation in the chat)."""
        await self.check_access(token, "get_pending_approvals")
        calls = await self.thread_store.calls(*WAITING_FOR_USER)
        return [PendingApproval.of(call) for call in calls]

    @public
    @turn
    async def submit_tool_result(self, token: str | None, tool_call_id: str, approved: bool) -> list[ChatMessage]:
        """Answer an in-chat confirmation: run the tool (approved) or record the denial, then continue."""
        await self.check_access(token, "submit_tool_result")
        if not isinstance(approved, bool):
            raise InvalidMessageError("approved must be true or false")
        call = await self._get_call(tool_call_id)
        if call is None:
            raise UnknownToolCallError(f"no tool call {tool_call_id!r} in this thread")
        if call.state != "awaiting-confirmation":
            raise ToolCallNotAwaitingError(f"tool call {tool_call_id!r} is {call.state}, not awaiting confirmation")
        first_seq = await self._last_seq()
        if approved:
            await self._execute_tool_call(call, confirmed=True)
        else:
            await self._finish_call(call, DENIED_CONFIRMATION_TEXT, interrupt=DENIED_IN_CHAT)
        await self._continue_if_resolved(call.id)
        return await self._messages_after(first_seq)

    @public
    @read
    async def stop(self, token: str | None) -> bool:
        """Stop the answer under way: the model's stream ends now and its text so far is kept (marked
        `stopped`), tools it had not started do not run, a tool already running finishes and is recorded.
        True if something was answering. The approvals waiting on the user's device are not affected."""
        await self.check_access(token, "stop")
        return self._request_stop()

    def _request_stop(self) -> bool:
        if not self._answering:
            return False
        self._stop_requested = True
        if self._model_call is not None and not self._model_call.done():
            self._model_call.cancel()
        return True

    @internal
    async def on_turn_while_busy(self, method: str, args: tuple[Any, ...]) -> None:
        """The overlap policy of a message that arrives while the thread answers another (`queue`: nothing
        to do; `reject`: 409; `interrupt`: stop the answer, then this message runs). Checked after the
        caller's token: nobody else learns that a turn runs, let alone stops it."""
        policy = self.overlapping_messages or self.settings.overlapping_messages
        if method != "send_message" or policy == "queue" or not self._answering:
            return
        await self.check_access(args[0] if args else None, "send_message")
        if policy == "reject":
            raise TurnInProgressError("the thread is answering another message; send this one when it is done")
        self._request_stop()

    @public
    @turn
    async def delete_thread(self, token: str | None) -> None:
        """Delete the thread (its owner only): first `before_delete` (the calls waiting on the user's device
        are withdrawn), then everything it stored is erased (messages, tool calls, credentials, schedules
        and its alarm), and its id is unknown again: a not-found answer, or a new, empty thread if created
        again. Its watchers get a `deleted` event."""
        await self.check_access(token, "delete_thread")
        await self._erase_thread()

    async def _erase_thread(self) -> None:
        await self.before_delete()
        await self.delete_everything()
        self.events.emit("deleted")

    def _retention_days(self) -> float | None:
        return self.retention_days or self.settings.retention_days

    @internal
    async def expire_if_idle(self, payload: Any = None) -> bool:
        """The retention schedule (`agents.retention`): delete the thread, as `delete_thread` does, once its
        newest message is older than the retention; else look again when it will be. True if deleted."""
        days, last = self._retention_days(), await self.thread_store.last_activity()
        if days is None or last is None:
            return False
        if not Retention.is_idle(days, last):
            await self._retention.next_look(self, days, last)
            return False
        logger.info("%s: idle for %.4g days, longer than its retention: deleted", self.name, days)
        await self._erase_thread()
        return True

    @internal
    async def before_delete(self) -> None:
        """What a thread does before it is erased (mixins extend it). Nothing here."""

    @public
    @read
    async def poll_events(
        self, token: str | None, after: int = 0, epoch: str | None = None, timeout: float = 25.0
    ) -> dict[str, Any]:
        """Events after `after` (waiting up to `timeout` s for one). A new `epoch` means: re-read messages."""
        await self.check_access(token, "poll_events")
        if epoch is not None and epoch != self.events.epoch:  # the agent restarted: answer at once
            return {"epoch": self.events.epoch, "events": self.events.after(0), "last_seq": self.events.last_seq}
        events: list[ThreadEvent] = await self.events.wait_after(after, max(0.0, min(float(timeout), 60.0)))
        return {"epoch": self.events.epoch, "events": events, "last_seq": self.events.last_seq}

    # -- resuming (called by schedules and mixins; not for remote callers) -------------------------
    @internal
    @turn
    async def resume_tool_call(self, payload: dict[str, Any]) -> str | None:
        """Run an interrupted tool call again; if it finished, continue the conversation. Idempotent."""
        call = await self._get_call(str(payload.get("tool_call_id", "")))
        if call is None or call.state not in ("call", "running", "pending-authorization"):
            return None if call is None else call.state
        await self._execute_tool_call(call)
        await self._continue_if_resolved(call.id)
        updated = await self._get_call(call.id)
        return updated.state if updated else None

    @internal
    @turn
    async def recover_turn(self, payload: Any = None) -> None:
        """Finish a turn a crash interrupted: answer a user message that got no reply."""
        if await self.storage.get(TURN_IN_PROGRESS) is None:
            return
        if await self.thread_store.last_role() != "user" or not await self._run_llm_loop(ends_turn=True):
            await self.storage.delete(TURN_IN_PROGRESS)
        self.events.emit("turn_end")

    async def on_start(self) -> None:
        await super().on_start()
        await self._schedule_recovery()

    async def _schedule_recovery(self) -> None:
        """After a restart, make sure nothing unfinished is forgotten (without piling up duplicates)."""
        scheduled = {
            (s.callback, json.dumps(s.payload, sort_keys=True)) for s in await self.get_schedules(status="pending")
        }
        for call in await self.thread_store.calls("call", "running"):
            payload = {"tool_call_id": call.id}
            if ("resume_tool_call", json.dumps(payload, sort_keys=True)) not in scheduled:
                await self.schedule(0, "resume_tool_call", payload)
        if await self.storage.get(TURN_IN_PROGRESS) is not None:
            if not any(callback == "recover_turn" for callback, _ in scheduled):
                await self.schedule(0, "recover_turn", None)

    # -- the tool loop -----------------------------------------------------------------------------
    def _validate_content(self, content: object) -> str:
        return checked_message_text(content, self.settings.max_message_chars)

    async def _tool_context(self, call: ToolCall) -> ToolContext:
        """What a tool learns of its call: the ids, the thread's owner, and whether an earlier run of it
        ended with its outcome unknown."""
        return ToolContext(
            tool_call_id=call.id,
            thread_id=self.id,
            owner=await self.get_owner(),
            agent_name=self.name,
            outcome_unknown=call.retry is not None and call.retry.outcome_unknown,
        )

    async def _continue_if_resolved(self, tool_call_id: str) -> None:
        call = await self._get_call(tool_call_id)
        if call is not None and call.state == "result":
            await self._run_llm_loop(continues=call.message_id)
            self.events.emit("turn_end")

    async def _run_llm_loop(self, *, continues: str | None = None, ends_turn: bool = False) -> bool:
        """The model's steps until it answers without calling tools (at most `max_steps`). `continues`: the
        assistant message whose call was resolved later (an approval), which this answer follows up; the
        answer's messages keep it in their metadata, so clients show them with that reply, not after the
        messages that came in between. `ends_turn`: the loop answers a user's message, and its final answer
        removes the turn's in-progress mark in the same transaction (one write fewer per turn); True if it
        did (else the caller removes the mark: the loop was stopped, or ran out of steps)."""
        self._answering, self._stop_requested = True, False
        try:
            for _ in range(self.settings.max_steps):
                if self._stop_requested:
                    return
                content, raw_calls = await self._call_llm(await self._llm_context())
                if self._stop_requested:  # the words so far are kept; the calls it asked for are not made
                    if content:
                        await self._append_assistant(content, [], continues, stopped=True)
                    return False
                final = ends_turn and not raw_calls
                _, calls = await self._append_assistant(content, raw_calls, continues, ending_turn=final)
                if not calls:
                    await self._compact_later()
                    return final
                await self._run_calls(calls)
            logger.info("%s: tool loop stopped after max_steps=%d", self.name, self.settings.max_steps)
            await self._compact_later()
            return False
        finally:
            self._answering = self._stop_requested = False

    async def _run_calls(self, calls: list[ToolCall]) -> None:
        """One step's calls, in order: at most `max_tool_calls_per_step` run (one answer must not fan out into
        unbounded work, or pushes); those after a stop are not run."""
        cap = self.settings.max_tool_calls_per_step
        for position, call in enumerate(calls):
            if self._stop_requested:
                await self._finish_call(call, STOPPED_TEXT)
            elif position >= cap:
                await self._finish_call(call, TOO_MANY_CALLS_TEXT.format(cap=cap))
            else:
                await self._execute_tool_call(call)

    def _tool_schemas(self) -> list[dict[str, Any]]:
        """The tools as the model is offered them (built once per activation)."""
        if self._schemas is None:
            self._schemas = [tool.openai_schema() for tool in self.tools.values()]
            self._schemas_size = wire_size(self._schemas)
        return self._schemas

    def _tool_schemas_size(self) -> int:
        """The characters the tools' schemas take in a request (the window's budget leaves them room)."""
        self._tool_schemas()
        return self._schemas_size

    async def _call_llm(self, context: ModelContext) -> tuple[str, list[dict[str, str]]]:
        """One streamed completion: tokens go to watchers; returns (text, tool calls). A model that is
        down gives an apology as the answer (and an `error` event), not a failed turn."""
        request: dict[str, Any] = {"model": self.settings.openai_model}
        if self.tools:
            request["tools"] = self._tool_schemas()
        started, written = time.perf_counter(), []

        def on_token(text: str) -> None:
            written.append(text)
            self.events.emit("token", text=text)

        self._model_call = asyncio.ensure_future(
            stream_completion(self.llm(), request, on_token, messages_json=context.wire)
        )
        try:
            answer = await self._model_call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._stop_requested or (current is not None and current.cancelling()):
                raise  # the turn itself is cancelled, not just its model call
            return "".join(written), []
        except (APIError, OpenAITimeout) as exc:
            MODEL_ERRORS.inc(model=self.settings.openai_model, error=type(exc).__name__)
            await self._report_error(exc, during="model")
            self.events.emit("error", message="The model is unavailable right now.")
            return "Sorry, the model is unavailable right now. Please try again.", []
        finally:
            self._model_call = None
        MODEL_CALL_SECONDS.observe(time.perf_counter() - started, model=self.settings.openai_model)
        return answer

    def _context_budget(self) -> int:
        return self.context_budget_chars or self.settings.context_budget_chars

    async def _llm_context(self) -> ModelContext:
        """The thread as the model reads it, within the budget (see `agents.model_context`): what a turn
        reads from the file is the window it sends, not the whole thread."""
        budget = self._context_budget()
        summary = await self.thread_store.summary_in_use()
        through = summary[0] if summary else 0
        reserved = self._tool_schemas_size()
        newest_first = await self.thread_store.blocks_newest_first(through, budget)
        whole_thread = through == 0 and sum(block.size for block in newest_first) < budget  # read to its start
        still_pending: list[ToolCall] = []
        while True:  # the note on calls still pending takes room too: settle the window with it
            head = preamble(self.settings.system_prompt, summary[1] if summary else None, still_pending)
            context = bounded_context(head, newest_first, budget, reserved=reserved)
            if whole_thread and len(context.blocks) == len(newest_first):
                break  # the window holds the whole thread: no call is left out of it
            outside = await self.thread_store.unfinished_calls_before(context.first_seq or through + 1)
            if {c.id for c in outside} <= {c.id for c in still_pending}:
                break
            still_pending = outside
        everything_in = whole_thread and len(context.blocks) == len(newest_first)
        self._window = (through, None if everything_in else context.first_seq)
        return context

    async def _compact_later(self) -> None:
        """Schedule a compaction step when enough of the thread fell out of the model's window unsummarized
        (`CHAT_COMPACT_AFTER_CHARS`; see `agents.compaction`); once, however many turns make it due."""
        if self._window is None or self._window[1] is None:
            return  # the window holds the whole thread: nothing is out of it
        through, first_seq = self._window
        if await self.thread_store.content_chars_between(through, first_seq) < self.settings.compact_after_chars:
            return
        if not any(s.callback == "compact_context" for s in await self.get_schedules(status="pending")):
            await self.schedule(COMPACTION_DELAY_SECONDS, "compact_context", None)

    @internal
    async def compact_context(self, payload: Any = None) -> bool:
        """One compaction step (a schedule's callback): fold the oldest turns out of the model's window into
        the thread's summary; schedule the next step if more remain. Safe to run again (see
        `agents.compaction`); a model that fails raises, and the schedule tries again later."""
        summary = await self.thread_store.summary_in_use()
        through, previous = summary if summary else (0, None)
        first_seq = (await self._llm_context()).first_seq
        if first_seq is None or first_seq <= through + 1:
            return False
        max_chars = self.settings.summary_max_chars
        room = max(1, self._context_budget() - request_overhead(previous))
        blocks = await self.thread_store.blocks_oldest_first(through, first_seq, room)
        if not blocks:
            return False
        request = compaction_request(self.settings.openai_model, previous, blocks, max_chars)
        text = (await complete_text(self.llm(), request)).strip()[:max_chars]
        if not text:
            raise RuntimeError("the model returned an empty summary")
        await self.thread_store.add_summary(blocks[-1].seq, text, len(blocks))
        logger.info("%s: summarized the thread through message %d", self.name, blocks[-1].seq)
        if await self.thread_store.content_chars_between(blocks[-1].seq, first_seq) > 0:  # (seqs may have gaps)
            await self.schedule(NEXT_STEP_DELAY_SECONDS, "compact_context", None)
        return True

    async def _execute_tool_call(self, call: ToolCall, *, confirmed: bool = False) -> None:
        tool = self.tools.get(call.name)
        if tool is None:
            await self._finish_call(call, f"Error: unknown tool {call.name!r}")
            return
        try:
            args = tool.parse_arguments(call.arguments)
        except ToolError as exc:
            await self._finish_call(call, f"Error: {exc}")
            return
        if tool.requires_confirmation and not confirmed:
            await self._set_call_state(call, "awaiting-confirmation")
            self.events.emit("interrupt", tool_call_id=call.id, kind="confirmation", tool_name=call.name)
            return
        if call.state != "pending-authorization":  # a re-check of a pending approval is not a new run
            await self._set_call_state(call, "running", interrupt=APPROVED_IN_CHAT if confirmed else None)
        try:
            result = await tool.run(args, await self._tool_context(call))
        except AsyncAuthorizationInterrupt as interrupt:
            if interrupt.terminal:  # a final outcome the wrapper did not turn into a result itself
                result = interrupt.message
            else:
                await self._set_call_state(call, "pending-authorization", interrupt=interrupt.to_dict())
                self.events.emit("interrupt", kind="async-authorization", **interrupt.to_dict())
                await self.on_authorization_interrupt(call, interrupt)
                return
        except TransientToolError as exc:
            if await self._retry_later(call, exc):
                TOOL_RETRIES.inc(tool=call.name)
                return
            TOOL_ERRORS.inc(tool=call.name)
            await self._report_error(exc, during=f"tool:{call.name}")
            result = f"Error: {call.name} did not complete: {exc} (given up after {self.tool_retry_limit} tries)"
        except ToolError as exc:
            TOOL_ERRORS.inc(tool=call.name)
            result = f"Error: {exc}"
        except Exception as exc:  # a bug in the tool: the model reads its type, the journal its message
            TOOL_ERRORS.inc(tool=call.name)
            await self._report_error(exc, during=f"tool:{call.name}")
            result = f"Error: {call.name} failed ({type(exc).__name__})"
        await self._finish_call(call, result if isinstance(result, str) else json.dumps(result, default=str))

    async def _retry_later(self, call: ToolCall, error: TransientToolError) -> bool:
        """Keep a transiently failed call running and run it again later, on a durable schedule with
        exponential backoff (the server's `retry_after` at least). False once the retries are used up; never
        while the call's outcome is unknown (`OutcomeUnknownError`, now or in an earlier run): unknown is
        not failed, and a failure would invite the user to do it again."""
        earlier = call.retry
        unknown = isinstance(error, OutcomeUnknownError) or (earlier is not None and earlier.outcome_unknown)
        attempt = (earlier.attempt if earlier is not None else 0) + 1
        if attempt > self.tool_retry_limit and not unknown:
            logger.warning("%s: %s failed %d times in a row; giving up", self.name, call.name, attempt - 1)
            return False
        delay = exponential_delay(attempt, TOOL_RETRY_BASE_SECONDS, TOOL_RETRY_MAX_SECONDS, floor=error.retry_after)
        retry = ToolRetry(
            attempt=attempt, next_attempt_at=time.time() + delay, reason=str(error), outcome_unknown=unknown
        )
        await self._set_call_state(call, "running", retry=retry)
        await self.schedule(delay, "resume_tool_call", {"tool_call_id": call.id})
        logger.info("%s: %s will be tried again in %.1fs (attempt %d)", self.name, call.name, delay, attempt)
        return True

    # -- persistence (the SQL is in `ThreadStore`; here the events that go with each write) ----------
    async def _start_turn(self, text: str, message_id: str | None) -> None:
        """The user's message and the mark of a turn in progress, in one transaction: a crash after it
        finds both, and `recover_turn` answers the message."""
        async with self.storage.transaction() as tx:
            await tx.put(TURN_IN_PROGRESS, {"since": time.time()})
            message = await self.thread_store.add_message("user", text, message_id, tx=tx)
        self.events.emit("turn_start")
        self.events.emit("message", message=message.model_dump(mode="json"))
        await self._retention.arm(self, self._retention_days())

    async def _append_assistant(
        self,
        content: str,
        raw_calls: list[dict[str, str]],
        continues: str | None = None,
        *,
        stopped: bool = False,
        ending_turn: bool = False,
    ) -> tuple[str, list[ToolCall]]:
        metadata: dict[str, Any] = {CONTINUES: continues} if continues else {}
        if stopped:
            metadata[STOPPED] = True
        message = await self.thread_store.add_assistant(content, raw_calls, metadata=metadata, ending_turn=ending_turn)
        self.events.emit("message", message=message.model_dump(mode="json"))
        return message.id, list(message.tool_calls or [])

    async def _set_call_state(
        self, call: ToolCall, state: str, *, interrupt: dict[str, Any] | None = None, retry: ToolRetry | None = None
    ) -> None:
        await self.thread_store.set_call_state(call.id, state, interrupt=interrupt, retry=retry)
        self.events.emit("tool_call", tool_call_id=call.id, state=state, tool_name=call.name)

    async def _finish_call(self, call: ToolCall, result: str, *, interrupt: dict[str, Any] | None = None) -> None:
        await self.thread_store.finish_call(call, result, interrupt=interrupt)
        denied = interrupt == DENIED_IN_CHAT
        self.events.emit("tool_result", tool_call_id=call.id, tool_name=call.name, result=result, denied=denied)

    async def _get_call(self, tool_call_id: str) -> ToolCall | None:
        return await self.thread_store.tool_call(tool_call_id)

    async def _last_seq(self) -> int:
        return await self.thread_store.last_seq()

    async def _messages_after(self, seq: int) -> list[ChatMessage]:
        return await self.thread_store.messages_after(seq)


__all__ = ["AIChatAgent"]
