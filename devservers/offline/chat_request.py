"""Reading a `POST /v1/chat/completions` body, refusing what OpenAI would refuse (as a `BadRequest`).

Only what the offline model relies on is checked (model, messages and their roles, tools, stream
options); the messages' wording matches OpenAI's closely enough for clients that show it.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from devservers.offline.errors import BadRequest

__all__ = ["ROLES", "read_chat_request", "validate_chat_request"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""The message roles the model accepts."""


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise BadRequest("'messages' is a required property and must be an array", "messages")
    if not messages:
        raise BadRequest("[] is too short - 'messages'", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages.[{i}]")
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {sorted(ROLES)}", f"messages.[{i}].role")
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise BadRequest(f"messages[{i}] (role tool) needs a tool_call_id", f"messages.[{i}].tool_call_id")
    _check_tool_pairs(messages)


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """As OpenAI: a `tool` message answers a call of the assistant message right before it (or before its
    sibling results), and every call of an assistant message is answered before the next other message."""
    waiting: set[str] = set()
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            if message["tool_call_id"] not in waiting:
                raise BadRequest(
                    f"Invalid parameter: messages with role 'tool' must be a response to a preceding message "
                    f"with 'tool_calls' (messages[{i}])",
                    f"messages.[{i}].role",
                )
            waiting.discard(message["tool_call_id"])
            continue
        if waiting:
            raise BadRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {sorted(waiting)}",
                f"messages.[{i}].role",
            )
        if message["role"] == "assistant":
            waiting = {str(call.get("id")) for call in message.get("tool_calls") or [] if isinstance(call, dict)}


def validate_chat_request(body: Any) -> dict[str, Any]:
    """`body` if it is a chat-completions request the model can answer, else a `BadRequest`."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("you must provide a model parameter", "model")
    _validate_messages(body.get("messages"))
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools)
    ):
        raise BadRequest("'tools' must be an array of {type: 'function', function: {...}}", "tools")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return body


async def read_chat_request(request: Request) -> dict[str, Any]:
    """The request's decoded and validated body, or a `BadRequest`."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    return validate_chat_request(body)
