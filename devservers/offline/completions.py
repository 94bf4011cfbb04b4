"""The offline model's identity and its non-streamed answer: a `chat.completion` in OpenAI's exact format.

`usage` estimates token counts (a token is about four characters) so clients that read them, and the
`include_usage` stream chunk, see plausible numbers.
"""

from __future__ import annotations

import math
from typing import Any

from devservers.offline.phrases import text_of
from devservers.offline.replies import OfflineReply

__all__ = ["MODEL_NAME", "OWNER", "SYSTEM_FINGERPRINT", "completion", "model_object", "usage"]

MODEL_NAME = "offline-demo-model"
OWNER = "ray-agent-runtime"
SYSTEM_FINGERPRINT = "fp_offline_demo"


def model_object() -> dict[str, Any]:
    """The model as `GET /v1/models` lists it."""
    return {"id": MODEL_NAME, "object": "model", "created": 1_700_000_000, "owned_by": OWNER}


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def usage(messages: list[dict[str, Any]], reply: OfflineReply) -> dict[str, int]:
    """The `usage` object of a completion: estimated prompt, completion and total tokens."""
    prompt = sum(3 + _estimate_tokens(text_of(m.get("content"))) for m in messages) + 3
    completion_tokens = _estimate_tokens(reply.content or "") + sum(
        3 + _estimate_tokens(c.name) + _estimate_tokens(c.arguments_json) for c in reply.tool_calls
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def completion(completion_id: str, created: int, messages: list[dict[str, Any]], reply: OfflineReply) -> dict[str, Any]:
    """The `chat.completion` object that answers `messages` with `reply`."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in reply.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": MODEL_NAME,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": usage(messages, reply),
    }
