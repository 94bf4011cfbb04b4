"""`Chat`: the product's thread agent, a `ThreadAgent` with the stock demo's tools.

Its tools: `get_stock_price`; `buy_stock` wrapped with `with_async_user_confirmation` so that a purchase
waits for the thread owner's approval on their device (CIBA), bound to the very order (RAR), then runs
exactly once with the approved token; and a watchlist (`watch_stock`, confirmed in the chat itself, and
`get_watchlist`). The CIBA user is always the thread's owner, never something the model chose.
"""

from __future__ import annotations

from agents.thread_agent import ThreadAgent
from auth.settings import auth_settings
from demo.order_details import purchase_details
from demo.stocks import binding_message_for, get_stock_price, make_buy_stock_tool
from demo.watchlist import make_watchlist_tools
from runtime import internal
from tools.base import Tool

__all__ = ["Chat"]


class Chat(ThreadAgent):
    """A chat thread whose purchases wait for the owner's approval on another device."""

    @internal
    def purchase_tool(self) -> Tool:
        """The raw purchase tool, before the approval wrapper (a seam for tests and other shops)."""
        return make_buy_stock_tool()

    @internal
    def build_tools(self) -> list[Tool]:
        buy_stock = self.with_async_user_confirmation(
            self.purchase_tool(),
            scopes=["stock:buy"],
            audience=auth_settings().checkout_audience,
            binding_message=binding_message_for,
            authorization_details=purchase_details,  # RAR: the token approves this very order only
        )
        return [get_stock_price, buy_stock, *make_watchlist_tools(self.storage)]
