"""Chat agents for tests: the real `Chat` with a shorter approval window, a confirmation tool, or
crash points that SIGKILL the actor's process at an exact step (a real crash, not a mock: there is no
other way to stop a process between two particular lines)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from agents.chat import Chat
from agents.directory import ThreadDirectory
from agents.thread_store import ThreadStore
from demo.stocks import get_stock_price, make_buy_stock_tool
from runtime import public, read, turn
from tests.agents_under_test import RuntimeMethodsForTests
from tools.base import Tool


class ShortExpiryChat(RuntimeMethodsForTests, Chat):
    ciba_requested_expiry = 3


class ConfirmingChat(RuntimeMethodsForTests, Chat):
    """Price look-ups need an in-chat confirmation here."""

    def build_tools(self) -> list[Tool]:
        tools = [tool for tool in super().build_tools() if tool.name != "get_stock_price"]
        confirming = Tool(
            get_stock_price.fn,
            name=get_stock_price.name,
            description=get_stock_price.description,
            parameters=get_stock_price.parameters,
            requires_confirmation=True,
        )
        return [confirming, *tools]


class SlowPricesChat(RuntimeMethodsForTests, Chat):
    """Price look-ups take a second and a half each: a tool that is running when the user stops."""

    def build_tools(self) -> list[Tool]:
        async def slow_price(ticker: str) -> str:
            await asyncio.sleep(1.5)
            return await get_stock_price.fn(ticker=ticker)

        tools = [tool for tool in super().build_tools() if tool.name != "get_stock_price"]
        slow = Tool(
            slow_price,
            name=get_stock_price.name,
            description=get_stock_price.description,
            parameters=get_stock_price.parameters,
        )
        return [slow, *tools]


class CheckableChat(RuntimeMethodsForTests, Chat):
    """An approval check on demand (what a late alarm or a ping would run)."""

    @public
    @turn
    async def check_now(self, tool_call_id: str) -> None:
        await self.check_async_user_confirmation({"tool_call_id": tool_call_id})


class ShortRetentionChat(RuntimeMethodsForTests, Chat):
    """Deleted once idle for 3 seconds."""

    retention_days = 3 / 86_400


class ShortRetentionDirectory(RuntimeMethodsForTests, ThreadDirectory):
    """Forgets entries idle for 2 seconds."""

    retention_days = 2 / 86_400


class RejectingChat(RuntimeMethodsForTests, Chat):
    overlapping_messages = "reject"


class InterruptingChat(RuntimeMethodsForTests, Chat):
    overlapping_messages = "interrupt"


class CrashableChat(RuntimeMethodsForTests, Chat):
    """`buy_stock` that dies (SIGKILL) before it runs, after the order was placed, or after the tool
    returned but before the thread recorded its result; or a turn that dies right after storing the user's
    message; once per marker file."""

    def crash_marker(self, point: str) -> str:
        return str(self.storage_dir / "crash-points" / f"{self.id}.{point}")

    def crash_if_marked(self, point: str) -> None:
        marker = self.crash_marker(point)
        if os.path.exists(marker):
            os.remove(marker)
            os.kill(os.getpid(), signal.SIGKILL)

    def purchase_tool(self) -> Tool:
        real = make_buy_stock_tool()
        agent = self

        async def buy_stock(**kwargs: Any) -> Any:
            agent.crash_if_marked("before-tool")
            result = real.fn(**kwargs)
            if hasattr(result, "__await__"):
                result = await result
            agent.crash_if_marked("after-order")
            return result

        return Tool(buy_stock, name=real.name, description=real.description, parameters=real.parameters)

    async def _finish_call(self, call: Any, result: str, *, interrupt: dict[str, Any] | None = None) -> None:
        if call.name == "buy_stock":
            self.crash_if_marked("before-result")
        await super()._finish_call(call, result, interrupt=interrupt)

    async def _start_turn(self, text: str, message_id: str | None) -> None:
        await super()._start_turn(text, message_id)
        self.crash_if_marked("after-user-message")  # the message is stored, its answer not yet


class HibernatingChat(RuntimeMethodsForTests, Chat):
    """The real `Chat`, hibernating after half a second with nothing to do."""

    idle_seconds = 0.5


class FlakyCheckChat(RuntimeMethodsForTests, Chat):
    """Its approval checks fail `failing_checks` times before they work (a stand-in for a storage that stays
    busy for minutes, which cannot be provoked quickly; the failure is raised where that one would be)."""

    failing_checks = 6
    schedule_retry_base_seconds = 0.1
    schedule_max_retries = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_checks = 0

    async def resume_tool_call(self, payload: dict[str, Any]) -> str | None:
        if self.failed_checks < self.failing_checks:
            self.failed_checks += 1
            raise RuntimeError("database is locked")
        return await super().resume_tool_call(payload)


class NeverCheckingChat(FlakyCheckChat):
    """Approval checks that always fail, and a 3 s approval window."""

    failing_checks = 10**9
    ciba_requested_expiry = 3


class ImpatientChat(RuntimeMethodsForTests, Chat):
    """Gives up on a transiently failing tool after two retries (the product waits twenty)."""

    tool_retry_limit = 2


class LimitedChat(RuntimeMethodsForTests, Chat):
    """At most 3 tool calls per answer, 2 approvals waiting per thread and 3 per user (the product: 4, 3, 5)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = self.settings.model_copy(
            update={
                "max_tool_calls_per_step": 3,
                "max_pending_approvals_per_thread": 2,
                "max_pending_approvals_per_user": 3,
            }
        )


class SummaryCrashingStore(ThreadStore):
    """Dies (SIGKILL) right before a summary is written, once per marker: a compaction step cut mid-way,
    after its model call."""

    def __init__(self, agent: CrashableChat) -> None:
        super().__init__(agent.storage)
        self.agent = agent

    async def add_summary(self, through_seq: int, content: str, messages: int) -> bool:
        self.agent.crash_if_marked("before-summary")
        return await super().add_summary(through_seq, content, messages)


class LongThreadChat(CrashableChat):
    """A model window of 6,000 characters and compaction once 1,500 fall out of it; its history can be
    written straight into its file (thousands of turns through the model would take minutes), and the
    window the next turn would send can be read."""

    context_budget_chars = 6_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = self.settings.model_copy(update={"compact_after_chars": 1_500})

    @property
    def thread_store(self) -> ThreadStore:
        if self._thread_store is None:
            self._thread_store = SummaryCrashingStore(self)
        return self._thread_store

    @public
    @turn
    async def write_history(self, turns: int, *, pending_first: bool = True) -> int:
        """`turns` exchanges through the thread's storage: a question and its answer, and every tenth a price
        look-up with its result; with `pending_first`, a purchase that still waits for approval first."""
        if pending_first:
            await self.thread_store.add_message("user", "buy 3 shares of NVDA")
            early = await self.thread_store.add_assistant(
                "", [{"id": "call_early_buy", "name": "buy_stock", "arguments": '{"ticker": "NVDA", "qty": 3}'}]
            )
            await self.thread_store.set_call_state(early.tool_calls[0].id, "awaiting-confirmation")
        for n in range(turns):
            await self.thread_store.add_message("user", f"question {n}: what is MSFT trading at today?")
            if n % 10 == 0:
                message = await self.thread_store.add_assistant(
                    "", [{"id": f"call_price_{n}", "name": "get_stock_price", "arguments": '{"ticker": "MSFT"}'}]
                )
                await self.thread_store.finish_call(message.tool_calls[0], "MSFT: 25.0")
            await self.thread_store.add_message("assistant", f"answer {n}: MSFT is at 25.0.")
        return await self.thread_store.last_seq()

    @public
    @read
    async def model_window(self) -> list[dict[str, Any]]:
        """The messages the next model call would receive."""
        return (await self._llm_context()).messages

    @public
    @read
    async def summaries(self) -> list[tuple[int, str]]:
        rows = await self.storage.fetchall("SELECT through_seq, content FROM context_summaries ORDER BY through_seq")
        return [(int(row["through_seq"]), str(row["content"])) for row in rows]

    @public
    @turn
    async def compact_now(self) -> bool:
        return await self.compact_context()
