"""The AI SDK's UI message protocol (the `ai` package's `useChat`, `DefaultChatTransport`,
`readUIMessageStream`; its 5.x to 7.x majors speak the same `v1` stream): a thread's messages as
`UIMessage`s, and a thread's events as the stream's chunks.

The mapping (the README's "Use it from the AI SDK" shows it from the client's side):

- A user message is a `UIMessage` of its own, with the thread's message id (the client's id when the
  client sent it).
- Everything that answers one user message (the model's steps, their tool calls and results, and the
  answer that follows an approval) is one assistant `UIMessage`, id `<user message id>-reply`
  (`reply_id`), each model step opened by a `step-start` part.
- A tool call is a `tool-<name>` part: `input-available` while it runs or waits for its user's device;
  `approval-requested` (approval id `approval-<call id>`, `approval_id`) while it waits for an answer in
  the chat; then `output-available` with its result, `output-error` for an `Error: ...` result, or
  `output-denied` when the user said no in the chat.
- A call that waits for its user's approval on another device (CIBA) also has a `data-approval` part, id
  the call's id, data `{toolCallId, status: "pending" | "done", bindingMessage, expiresAt (ISO 8601),
  approvalUrl}`: what a stock `useChat` page renders as "approve on your device".

One stream writer (`UIStream`) makes the chunks, both from live events and from stored messages (a
resumed stream replays the reply from the start; the AI SDK's `DefaultChatTransport` expects that), and
`ui_messages` builds the stored history by folding those same chunks into parts, so what a stream
showed and what the history says cannot drift apart.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from agents.messages import CONTINUES, ChatMessage, ThreadEvent, ToolCall

Chunk = dict[str, Any]
"""One UI message stream chunk (`{"type": "text-delta", ...}`), sent as one server-sent event."""

APPROVAL_PART = "data-approval"
ERROR_PREFIX = "Error:"


def reply_id(user_message_id: str) -> str:
    """The id of the assistant `UIMessage` that answers the user message `user_message_id`."""
    return f"{user_message_id}-reply"


def approval_id(tool_call_id: str) -> str:
    """The AI SDK approval id of an in-chat confirmation: its call's id, marked. A client answers only
    approvals of its own thread's calls still waiting (the agent checks), so nothing is gained by forging
    one, and an answered one cannot be answered again."""
    return f"approval-{tool_call_id}"


def tool_call_id_of_approval(approval: str) -> str | None:
    """The call an approval id names, or None when it is not one of ours."""
    head, _, call_id = approval.partition("-")
    return call_id if head == "approval" and call_id else None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(float(timestamp), datetime.UTC).isoformat().replace("+00:00", "Z")


def _input(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class UIStream:
    """The chunks of one assistant reply, from events (`feed`) or stored messages (`replay`), each thing
    sent once however often it is seen.

    Events of other turns are left out: a turn that starts while this reply waits (another tab's message)
    is skipped from its `turn_start` to its `turn_end`, and so is the answer that follows a call that is not
    this reply's. `waiting` holds the reply's calls still waiting on the user's device: while it is not
    empty, or an answer is due after one of them resolved (`answer_due`), the reply is not finished.
    """

    def __init__(
        self,
        response_id: str,
        *,
        approval_url: str | None,
        user_message_id: str | None = None,
        live_tokens: bool = True,
    ) -> None:
        self.response_id = response_id
        self.approval_url = approval_url
        self.live_tokens = live_tokens
        self.waiting: set[str] = set()
        self.answer_due = False
        self._awaited_message = user_message_id
        self._skipping = user_message_id is not None
        self._foreign_answer = False
        self._step_open = False
        self._step_called = False
        """Whether the open step called tools: the model's next words are a new step."""
        self._text_id: str | None = None
        self._texts = 0
        self._messages: set[str] = set()
        self._calls: dict[str, str] = {}
        """The reply's calls whose input was sent: id -> tool name."""
        self._sent: set[tuple[str, str]] = set()
        """(call id, what) already sent: "approval", "pending", "done", "output"."""
        self._approval_details: dict[str, dict[str, Any]] = {}
        """The `data-approval` part last sent per call (a later status keeps its binding message)."""

    # -- the stream's frame ---------------------------------------------------------------------------
    def start(self) -> list[Chunk]:
        return [{"type": "start", "messageId": self.response_id}]

    def finish(self) -> list[Chunk]:
        return [*self._close_step(), {"type": "finish"}]

    @property
    def finished(self) -> bool:
        return not self.waiting and not self.answer_due

    # -- live events ------------------------------------------------------------------------------------
    def feed(self, event: ThreadEvent) -> list[Chunk]:
        """The chunks one thread event adds to this reply (none for another turn's events)."""
        kind, data = event.type, event.data
        if self._skipping:
            message = data.get("message") or {}
            if kind == "message" and message.get("role") == "user" and message.get("id") == self._awaited_message:
                self._skipping, self._awaited_message = False, None
            elif kind == "turn_end":
                self._skipping = self._awaited_message is not None
            return []
        if kind == "turn_start":
            self._skipping = True
            return []
        if self._foreign_answer:
            self._foreign_answer = kind != "turn_end"
            return []
        if kind == "token" and self.live_tokens:
            return [*self._open_text(), {"type": "text-delta", "id": self._text_id, "delta": data.get("text", "")}]
        if kind == "message" and (data.get("message") or {}).get("role") == "assistant":
            return self._assistant(ChatMessage.model_validate(data["message"]))
        if kind == "interrupt":
            return self._interrupt(data)
        if kind == "tool_result":
            return self._tool_result(data)
        if kind == "turn_end":
            self.answer_due = False
            return self._close_step()
        return []

    def _interrupt(self, data: Mapping[str, Any]) -> list[Chunk]:
        call_id = str(data.get("tool_call_id") or "")
        if call_id not in self._calls:
            return []
        if data.get("kind") == "confirmation":
            return self._once(call_id, "approval", self._approval_request(call_id))
        self.waiting.add(call_id)
        return self._once(call_id, "pending", [self._approval_part(call_id, "pending", data)])

    def _tool_result(self, data: Mapping[str, Any]) -> list[Chunk]:
        call_id = str(data.get("tool_call_id") or "")
        if call_id not in self._calls:
            self._foreign_answer = True  # the answer that follows is that call's reply, not this one
            return []
        if call_id in self.waiting:
            self.answer_due = True
        return self._output(call_id, str(data.get("result") or ""), denied=bool(data.get("denied")))

    # -- stored messages --------------------------------------------------------------------------------
    def replay(self, messages: Iterable[ChatMessage]) -> list[Chunk]:
        """The chunks the stored `messages` (the reply's assistant messages) add to what was sent."""
        chunks: list[Chunk] = []
        for message in messages:
            if message.role == "assistant":
                chunks += self._assistant(message)
        return chunks

    # -- the parts --------------------------------------------------------------------------------------
    def _assistant(self, message: ChatMessage) -> list[Chunk]:
        chunks: list[Chunk] = []
        if message.id not in self._messages:
            self._messages.add(message.id)
            if self._text_id is None and self._step_called:
                chunks += self._close_step()  # a step after tool results, its text not streamed
            if self._text_id is not None:
                chunks.append({"type": "text-end", "id": self._text_id})
                self._text_id = None
            elif message.content:
                chunks += [*self._open_text(), {"type": "text-delta", "id": self._text_id, "delta": message.content}]
                chunks.append({"type": "text-end", "id": self._text_id})
                self._text_id = None
            chunks += self._open_step()
            for call in message.tool_calls or []:
                self._calls[call.id] = call.name
                tool_input = {"toolCallId": call.id, "toolName": call.name, "input": _input(call.arguments)}
                chunks.append({"type": "tool-input-available", **tool_input})
            if message.tool_calls:
                self._step_called = True
            else:
                chunks += self._close_step()
        for call in message.tool_calls or []:
            chunks += self._progress(call)
        return chunks

    def _progress(self, call: ToolCall) -> list[Chunk]:
        """What the stored state of `call` shows beyond what was sent."""
        self._calls.setdefault(call.id, call.name)
        interrupt = call.interrupt or {}
        chunks: list[Chunk] = []
        if call.state == "awaiting-confirmation" or call.answered_in_chat:
            chunks += self._once(call.id, "approval", self._approval_request(call.id))
        if interrupt.get("binding_message") is not None:
            status = "done" if call.state == "result" else "pending"
            if status == "pending":
                self.waiting.add(call.id)
            chunks += self._once(call.id, status, [self._approval_part(call.id, status, interrupt)])
        if call.state == "result":
            chunks += self._output(call.id, call.result or "", denied=call.denied_in_chat)
        return chunks

    def _output(self, call_id: str, result: str, *, denied: bool) -> list[Chunk]:
        chunks: list[Chunk] = []
        if call_id in self.waiting or (call_id, "pending") in self._sent:
            self.waiting.discard(call_id)
            chunks += self._once(call_id, "done", [self._approval_part(call_id, "done", {})])
        if denied:
            chunks += self._once(call_id, "approval", self._approval_request(call_id))
            return chunks + self._once(call_id, "output", [{"type": "tool-output-denied", "toolCallId": call_id}])
        if result.startswith(ERROR_PREFIX):
            error = {"type": "tool-output-error", "toolCallId": call_id, "errorText": result}
            return chunks + self._once(call_id, "output", [error])
        output = {"type": "tool-output-available", "toolCallId": call_id, "output": result}
        return chunks + self._once(call_id, "output", [output])

    def _approval_request(self, call_id: str) -> list[Chunk]:
        # the model's words that follow (asking for the answer) stay in this step: the AI SDK looks for the
        # approvals in the reply's last step (`lastAssistantMessageIsCompleteWithApprovalResponses`)
        self._step_called = False
        return [{"type": "tool-approval-request", "approvalId": approval_id(call_id), "toolCallId": call_id}]

    def _approval_part(self, call_id: str, status: str, details: Mapping[str, Any]) -> Chunk:
        known = self._approval_details.get(call_id, {})
        data = {
            "toolCallId": call_id,
            "status": status,
            "bindingMessage": details.get("binding_message", known.get("bindingMessage")),
            "expiresAt": _iso(details["expires_at"]) if details.get("expires_at") else known.get("expiresAt"),
            "approvalUrl": self.approval_url,
        }
        self._approval_details[call_id] = data
        return {"type": APPROVAL_PART, "id": call_id, "data": data}

    def _once(self, call_id: str, what: str, chunks: list[Chunk]) -> list[Chunk]:
        if (call_id, what) in self._sent:
            return []
        self._sent.add((call_id, what))
        return chunks

    def _open_step(self) -> list[Chunk]:
        if self._step_open:
            return []
        self._step_open = True
        return [{"type": "start-step"}]

    def _close_step(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        if self._text_id is not None:
            chunks.append({"type": "text-end", "id": self._text_id})
            self._text_id = None
        if self._step_open:
            self._step_open = self._step_called = False
            chunks.append({"type": "finish-step"})
        return chunks

    def _open_text(self) -> list[Chunk]:
        if self._text_id is not None:
            return []
        chunks = self._close_step() if self._step_called else []  # the model's next step, after tool results
        chunks += self._open_step()
        self._texts += 1
        self._text_id = f"{self.response_id}-text-{self._texts}"
        return [*chunks, {"type": "text-start", "id": self._text_id}]


class Reply(NamedTuple):
    """A user message and the assistant messages that answer it (one `UIMessage` each)."""

    user: ChatMessage | None
    answer: list[ChatMessage]

    @property
    def id(self) -> str:
        return reply_id(self.user.id) if self.user else self.answer[0].id


def replies(messages: Iterable[ChatMessage]) -> list[Reply]:
    """The thread's messages as replies, in order. An answer written after an approval (`CONTINUES` in its
    metadata) belongs to the reply of the message whose call was approved, not to the one it follows."""
    result: list[Reply] = []
    reply_of: dict[str, Reply] = {}
    for message in messages:
        if message.role == "user":
            result.append(Reply(message, []))
        elif message.role == "assistant":
            target = reply_of.get(str(message.metadata.get(CONTINUES)))
            if target is None:
                if not result:  # (a thread that starts with the assistant's words)
                    result.append(Reply(None, []))
                target = result[-1]
            target.answer.append(message)
            reply_of[message.id] = target
    return result


def ui_messages(messages: Iterable[ChatMessage], approval_url: str | None) -> list[dict[str, Any]]:
    """The thread as `UIMessage[]` (what `useChat` takes as its initial messages and the `ai` package's
    `validateUIMessages` accepts): each user message, then one assistant message for its reply, built from
    the chunks a stream of that reply sends."""
    result: list[dict[str, Any]] = []
    for reply in replies(messages):
        if reply.user is not None:
            text = [{"type": "text", "text": reply.user.content or ""}]
            result.append({"id": reply.user.id, "role": "user", "parts": text})
        if reply.answer:
            stream = UIStream(reply.id, approval_url=approval_url)
            parts = parts_of([*stream.replay(reply.answer), *stream.finish()])
            result.append({"id": reply.id, "role": "assistant", "parts": parts})
    return result


def parts_of(chunks: Iterable[Chunk]) -> list[dict[str, Any]]:
    """The parts a client builds from `chunks` (the subset of the protocol `UIStream` sends), as the `ai`
    package's `processUIMessageStream` builds them."""
    parts: list[dict[str, Any]] = []
    texts: dict[str, dict[str, Any]] = {}
    tools: dict[str, dict[str, Any]] = {}
    for chunk in chunks:
        kind = chunk["type"]
        if kind == "start-step":
            parts.append({"type": "step-start"})
        elif kind == "text-start":
            texts[chunk["id"]] = {"type": "text", "text": "", "state": "streaming"}
            parts.append(texts[chunk["id"]])
        elif kind == "text-delta":
            texts[chunk["id"]]["text"] += chunk["delta"]
        elif kind == "text-end":
            texts[chunk["id"]]["state"] = "done"
        elif kind == "tool-input-available":
            tool = {"type": f"tool-{chunk['toolName']}", "toolCallId": chunk["toolCallId"]}
            tools[chunk["toolCallId"]] = tool | {"state": "input-available", "input": chunk["input"]}
            parts.append(tools[chunk["toolCallId"]])
        elif kind == "tool-approval-request":
            tools[chunk["toolCallId"]].update(state="approval-requested", approval={"id": chunk["approvalId"]})
        elif kind == "tool-output-available":
            tool = tools[chunk["toolCallId"]]
            tool.update(state="output-available", output=chunk["output"])
            if "approval" in tool:
                tool["approval"] = {**tool["approval"], "approved": True}
        elif kind == "tool-output-error":
            tool = tools[chunk["toolCallId"]]
            tool.update(state="output-error", errorText=chunk["errorText"])
            if "approval" in tool:
                tool["approval"] = {**tool["approval"], "approved": True}
        elif kind == "tool-output-denied":
            tool = tools[chunk["toolCallId"]]
            tool.update(state="output-denied", approval={**tool.get("approval", {}), "approved": False})
        elif kind.startswith("data-"):
            same = [p for p in parts if p["type"] == kind and p.get("id") == chunk.get("id")]
            if same:
                same[0]["data"] = chunk["data"]
            else:
                parts.append({"type": kind, "id": chunk.get("id"), "data": chunk["data"]})
    return parts
