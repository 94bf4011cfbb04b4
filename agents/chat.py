"""`Chat`: the product's thread agent, composed from small mixins by plain inheritance.

    class Chat(AuthAgent, OwnedAgent, AsyncUserConfirmationResumer, AIChatAgent)

Its tools: `get_stock_price`; `buy_stock` wrapped with `with_async_user_confirmation` so that a
purchase waits for the thread owner's approval on their device (CIBA), then runs exactly once with the
approved token; and a watchlist (`watch_stock`, confirmed in the chat itself, and `get_watchlist`). The
CIBA user is always the thread's owner, never something the model chose.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agents.ai_chat_agent import AIChatAgent
from agents.auth_agent import AuthAgent
from agents.owned_agent import OwnedAgent
from agents.resumer import AsyncUserConfirmationResumer
from auth.settings import AuthSettings
from tools.async_confirmation import with_async_user_confirmation
from tools.base import Tool, current_tool_context
from tools.ciba_client import CIBAClient
from tools.ciba_ping import ping_key
from tools.credential_store import SQLiteCredentialStore
from tools.order_details import purchase_details
from tools.stocks import binding_message_for, get_stock_price, make_buy_stock_tool
from tools.watchlist import make_watchlist_tools


def thread_owner(**_: Any) -> str:
    """The CIBA user: the owner of the thread the tool runs in (never a tool argument)."""
    owner = current_tool_context().owner
    if not owner:
        raise RuntimeError("the thread has no owner to ask for approval")
    return owner


class Chat(AuthAgent, OwnedAgent, AsyncUserConfirmationResumer, AIChatAgent):
    """A chat thread whose purchases wait for the owner's approval on another device."""

    ciba_requested_expiry: ClassVar[int] = 300
    """Seconds the user has to approve a purchase (CIBA `requested_expiry`)."""

    def purchase_tool(self) -> Tool:
        """The raw purchase tool, before the approval wrapper (a seam for tests and other shops)."""
        return make_buy_stock_tool()

    _credential_store: SQLiteCredentialStore | None = None

    def build_tools(self) -> list[Tool]:
        settings = AuthSettings()
        store = self._credential_store = SQLiteCredentialStore(
            self.storage_dir / self.agent_class_name() / f"{self.id}.credentials.sqlite3",
            settings.require_encryption_key(),
        )
        buy_stock = with_async_user_confirmation(
            self.purchase_tool(),
            user_id=thread_owner,
            scopes=["stock:buy"],
            audience=settings.checkout_audience,
            binding_message=binding_message_for,
            authorization_details=purchase_details,  # RAR: the token approves this very order only
            requested_expiry=self.ciba_requested_expiry,
            store=store,
            client=CIBAClient.shared(settings),
            delivery_mode=settings.ciba_delivery_mode,
            ping_fallback=settings.ciba_ping_fallback_seconds,
            ping_key=ping_key(settings.require_encryption_key().get_secret_value()),
        )
        return [get_stock_price, buy_stock, *make_watchlist_tools(self.storage)]

    async def close(self) -> None:
        """Hibernating: also close the credential store's file."""
        try:
            if self._credential_store is not None:
                await self._credential_store.close()
        finally:
            await super().close()
