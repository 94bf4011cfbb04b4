"""The thread agent of the throughput benchmark (`bench/throughput_bench.py`): the product's `Chat`, with a
way to give a thread a long history at once (through the thread's own storage, as its turns would have
written it), so that a 2,000-message thread does not take 1,000 model turns to build.

Everything a turn does is the product's: the ingress, the turn, the model window, the model call, the
stored messages. Served by the ingress as `AGENTRT_AGENT_CLASS`.
"""

from __future__ import annotations

from agents.chat import Chat
from runtime import public, turn


class LongThreadChat(Chat):
    """`Chat` whose history can be written in one call."""

    @public
    @turn
    async def write_history(self, turns: int) -> int:
        """`turns` exchanges (a question and its answer; every tenth a price look-up with its result),
        written after what the thread has; returns the last message's seq."""
        store = self.thread_store
        for n in range(turns):
            await store.add_message("user", f"question {n}: what is MSFT trading at today?")
            if n % 10 == 0:
                asked = await store.add_assistant(
                    "", [{"id": f"call_h{n}", "name": "get_stock_price", "arguments": '{"ticker": "MSFT"}'}]
                )
                await store.finish_call(asked.tool_calls[0], "MSFT is trading at 25.00 USD.")
            await store.add_message("assistant", f"answer {n}: MSFT is trading at 25.00 USD.")
        return await store.last_seq()
