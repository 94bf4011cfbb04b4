"""RAR (RFC 9396) `authorization_details` for a stock purchase: what the user approves, and the check the
checkout makes, so a token approved for one order can buy nothing else.

`buy_stock` asks for `[{"type": "stock_purchase", "actions": ["buy"], "ticker": "MSFT", "quantity": 10,
"limit_price": null}]` beside its `stock:buy` scope; the authorization server shows it on the user's device
and puts it in the access token; the checkout API refuses a token whose details do not describe the order
it is asked to place (a token approved for 10 MSFT cannot buy 1,000 TSLA).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

STOCK_PURCHASE_TYPE = "stock_purchase"


def purchase_details(ticker: str, quantity: int, price: float | None = None) -> list[dict[str, Any]]:
    """The `authorization_details` of one purchase (`price` is the optional limit price per share)."""
    return [
        {
            "type": STOCK_PURCHASE_TYPE,
            "actions": ["buy"],
            "ticker": str(ticker).upper(),
            "quantity": int(quantity),
            "limit_price": None if price is None else float(price),
        }
    ]


def approves_order(details: Sequence[Mapping[str, Any]], ticker: str, quantity: int, limit_price: float | None) -> bool:
    """Whether one of `details` is a purchase of exactly this order."""
    for entry in details:
        if not isinstance(entry, Mapping) or entry.get("type") != STOCK_PURCHASE_TYPE:
            continue
        approved_limit = entry.get("limit_price")
        same_limit = (approved_limit is None and limit_price is None) or (
            isinstance(approved_limit, int | float)
            and limit_price is not None
            and abs(float(approved_limit) - float(limit_price)) < 1e-9
        )
        if (
            str(entry.get("ticker", "")).upper() == ticker.upper()
            and entry.get("quantity") == quantity
            and not isinstance(entry.get("quantity"), bool)
            and same_limit
        ):
            return True
    return False
