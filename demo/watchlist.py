"""The demo's in-chat confirmation tools: a watchlist kept in the thread's own storage.

`watch_stock` changes something the user cares about but needs no credential, so it is confirmed in the
chat itself (the seed's `processToolCalls` style): the call waits as `awaiting-confirmation` until the
client sends approve or deny for it (`POST /threads/{id}/tool-results`), with the same durability as a
CIBA approval. `get_watchlist` only reads and runs at once.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pydantic import BaseModel

from demo.stocks import StockPriceParams
from tools.base import Tool

WATCHLIST_PREFIX = "watchlist:"


class KeyValueStorage(Protocol):
    """What the tools need of an agent's storage (`runtime.AgentStorage` has it)."""

    async def put(self, key: str, value: Any) -> None: ...

    async def list(self, prefix: str = "") -> dict[str, Any]: ...


class NoParameters(BaseModel):
    pass


def make_watchlist_tools(storage: KeyValueStorage) -> list[Tool]:
    """`watch_stock` (confirmed in the chat) and `get_watchlist`, keeping the list in `storage`."""

    async def watch_stock(ticker: str) -> str:
        await storage.put(WATCHLIST_PREFIX + ticker, {"ticker": ticker, "added_at": time.time()})
        return f"Added {ticker} to your watchlist"

    async def get_watchlist() -> str:
        tickers = sorted(entry["ticker"] for entry in (await storage.list(WATCHLIST_PREFIX)).values())
        return "Your watchlist: " + ", ".join(tickers) if tickers else "Your watchlist is empty"

    return [
        Tool(
            watch_stock,
            name="watch_stock",
            description="Add a stock to the user's watchlist. The user confirms it in the chat.",
            parameters=StockPriceParams,
            requires_confirmation=True,
        ),
        Tool(
            get_watchlist,
            name="get_watchlist",
            description="List the stocks on the user's watchlist.",
            parameters=NoParameters,
        ),
    ]
