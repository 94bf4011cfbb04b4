"""The demo price table shared by the `get_stock_price` tool, the checkout API and the offline model.

The prices are fixed, fictional demo values (MSFT at 25.0 is the figure of the original sample's story), so
the tool, the checkout API and the tests always agree on what a purchase costs. Nothing here touches the
network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

CURRENCY = "USD"

#: The largest quantity a single demo order may ask for.
MAX_QUANTITY = 1_000_000

#: Ticker symbols: 1-5 letters (upper case once normalised).
TICKER_RE = re.compile(r"^[A-Z]{1,5}$")

DEMO_PRICES: Mapping[str, float] = MappingProxyType(
    {
        "MSFT": 25.0,
        "AAPL": 19.5,
        "GOOGL": 17.25,
        "AMZN": 18.8,
        "NVDA": 12.4,
        "TSLA": 24.1,
        "META": 48.0,
        "IBM": 21.3,
        "ORCL": 14.2,
        "NFLX": 63.0,
    }
)

#: Company names the offline model understands in place of tickers ("buy 5 shares of Microsoft").
COMPANY_TICKERS: Mapping[str, str] = MappingProxyType(
    {
        "microsoft": "MSFT",
        "apple": "AAPL",
        "google": "GOOGL",
        "alphabet": "GOOGL",
        "amazon": "AMZN",
        "nvidia": "NVDA",
        "tesla": "TSLA",
        "meta": "META",
        "facebook": "META",
        "ibm": "IBM",
        "oracle": "ORCL",
        "netflix": "NFLX",
    }
)


class UnknownTickerError(LookupError):
    """The ticker is well formed but not in the demo price table."""

    def __init__(self, ticker: str, known: list[str] | None = None) -> None:
        super().__init__(ticker)
        self.ticker = ticker
        self.known = sorted(DEMO_PRICES) if known is None else known

    def __str__(self) -> str:
        return f"unknown ticker {self.ticker!r} (known: {', '.join(self.known)})"


def normalize_ticker(value: str) -> str:
    """Strip, drop a leading `$` and upper-case; raise `ValueError` unless it is 1-5 letters."""
    if not isinstance(value, str):
        raise ValueError("ticker must be a string")
    ticker = value.strip().removeprefix("$").upper()
    if not TICKER_RE.fullmatch(ticker):
        raise ValueError(f"ticker must be 1-5 letters, got {value!r}")
    return ticker


def known_tickers(prices: Mapping[str, float] | None = None) -> list[str]:
    return sorted(DEMO_PRICES if prices is None else prices)


def get_price(ticker: str, prices: Mapping[str, float] | None = None) -> float:
    """The demo price of `ticker` (normalised first); raise `UnknownTickerError` or `ValueError`."""
    table = DEMO_PRICES if prices is None else prices
    symbol = normalize_ticker(ticker)
    try:
        return float(table[symbol])
    except KeyError:
        raise UnknownTickerError(symbol, sorted(table)) from None
