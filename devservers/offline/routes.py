"""The offline model's HTTP handlers, one module-level function per route.

Each finds what it needs on `request.app.state` (set by
`devservers.offline.server.create_offline_model_app`): `stats`, the ready flag and request counters
tests read, `chunk_delay`, the pause between streamed chunks, and `context_chars`, the context window
(None: unlimited).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devservers.offline.chat_request import read_chat_request
from devservers.offline.completions import MODEL_NAME, completion, model_object
from devservers.offline.errors import BadRequest, openai_error
from devservers.offline.replies import plan_reply
from devservers.offline.streaming import sse_response, stream_chunks

__all__ = ["chat_completions", "get_model", "get_stats", "healthz", "list_models", "new_stats"]


def new_stats() -> dict[str, Any]:
    """The counters of a new app: every request, answered completions, streams, tool calls and refusals."""
    return {
        "ready": True,
        "model": MODEL_NAME,
        "requests": 0,
        "chat_completions": 0,
        "streams": 0,
        "tool_calls": 0,
        "errors": 0,
        "largest_request_chars": 0,
    }


def _stats(request: Request) -> dict[str, Any]:
    return request.app.state.stats


async def chat_completions(request: Request) -> Response:
    """Answer a chat-completions request with `plan_reply`'s reply, as one object or as an SSE stream."""
    stats = _stats(request)
    stats["requests"] += 1
    try:
        body = await read_chat_request(request)
    except BadRequest as exc:
        stats["errors"] += 1
        return openai_error(400, exc.message, kind="invalid_request_error", param=exc.param, code=exc.code)

    messages: list[dict[str, Any]] = body["messages"]
    size = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(body.get("tools") or [], ensure_ascii=False))
    stats["largest_request_chars"] = max(stats["largest_request_chars"], size)
    limit = request.app.state.context_chars
    if limit is not None and size > limit:  # as a real model whose context window is `limit` long
        stats["errors"] += 1
        message = (
            f"This model's maximum context length is {limit} characters. However, your messages resulted in "
            f"{size} characters."
        )
        code = "context_length_exceeded"
        return openai_error(400, message, kind="invalid_request_error", param="messages", code=code)
    reply = plan_reply(
        messages,
        body.get("tools"),
        body.get("tool_choice"),
        parallel_tool_calls=body.get("parallel_tool_calls", True) is not False,
    )
    stats["chat_completions"] += 1
    stats["tool_calls"] += len(reply.tool_calls)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    if not body.get("stream"):
        return JSONResponse(completion(completion_id, created, messages, reply))

    stats["streams"] += 1
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = stream_chunks(completion_id, created, messages, reply, include_usage)
    return sse_response(chunks, chunk_delay=max(request.app.state.chunk_delay, reply.pace))


async def list_models(request: Request) -> JSONResponse:
    _stats(request)["requests"] += 1
    return JSONResponse({"object": "list", "data": [model_object()]})


async def get_model(request: Request) -> JSONResponse:
    _stats(request)["requests"] += 1
    model = request.path_params["model"]
    if model != MODEL_NAME:
        return openai_error(
            404, f"The model '{model}' does not exist", kind="invalid_request_error", code="model_not_found"
        )
    return JSONResponse(model_object())


async def get_stats(request: Request) -> JSONResponse:
    return JSONResponse(_stats(request))


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "model": MODEL_NAME})
