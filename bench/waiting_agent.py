"""The thread agent of the waiting benchmark (`bench/waiting_bench.py`): the product's `Chat`, whose model
is a two-line script instead of a model server, so that 10,000 purchases start in minutes.

Everything else is the product's: the turn, the `buy_stock` tool behind `with_async_user_confirmation`
(CIBA in ping mode at the dev authorization server, RAR details, the encrypted credential store), the
alarms, hibernation, the ping route of the HTTP ingress (which serves this class: `AGENTRT_AGENT_CLASS`).

"buy N" makes the scripted model call `buy_stock(MSFT, N)`; anything after that is answered in words.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import ClassVar

from agents.chat import Chat
from agents.model_context import ModelContext

EXPIRY_VARIABLE = "WAITING_BENCH_EXPIRY"
"""The CIBA request's lifetime the benchmark asks for (the dev server's cap is raised to match)."""


class Waiter(Chat):
    """`Chat` with a scripted model: one purchase per "buy N" message."""

    ciba_requested_expiry: ClassVar[int] = int(os.environ.get(EXPIRY_VARIABLE, "300"))

    async def _call_llm(self, context: ModelContext) -> tuple[str, list[dict[str, str]]]:
        last = context.messages[-1]
        if last["role"] == "user" and str(last["content"]).startswith("buy "):
            quantity = int(str(last["content"]).split()[1])
            call = {"id": f"call_{uuid.uuid4().hex}", "name": "buy_stock"}
            call["arguments"] = json.dumps({"ticker": "MSFT", "quantity": quantity})
            return "", [call]
        if last["role"] == "tool":
            return f"Done: {last['content']}", []
        return "Waiting for your approval.", []
