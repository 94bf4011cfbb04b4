"""Reading a `POST /orders` request into the order record to store, refusing anything malformed.

Each step raises a `CheckoutError` with its own code: a missing or bad `Idempotency-Key` (400), a body
that is not JSON (400) or not a valid order (422), and a token whose `authorization_details` approve a
different order (403). The request fingerprint is what tells a replay from a reused key.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from demo.order_details import approves_order
from demo.prices import CURRENCY, MAX_QUANTITY, UnknownTickerError, get_price
from devservers.checkout.errors import CheckoutError
from devservers.checkout.tokens import bearer_challenge

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "OrderRequest",
    "check_authorization_details",
    "idempotency_key",
    "new_order_record",
    "parse_order_body",
    "read_json_body",
    "request_fingerprint",
]

MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True)
class OrderRequest:
    """A valid order body: what to buy, the optional limit price, and the market price it fills at."""

    ticker: str
    quantity: int
    limit_price: float | None
    market_price: float


def idempotency_key(request: Request) -> str:
    """The request's `Idempotency-Key` (stripped), or a 400 `CheckoutError`."""
    key = request.headers.get("idempotency-key")
    if key is None or not key.strip():
        raise CheckoutError(400, "idempotency_key_required", "an 'Idempotency-Key' header is required")
    key = key.strip()
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise CheckoutError(
            400,
            "invalid_idempotency_key",
            f"the Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
        )
    return key


async def read_json_body(request: Request) -> Any:
    """The decoded body (`None` for an empty one), or a 400 `CheckoutError`."""
    try:
        return json.loads(await request.body() or b"null")
    except ValueError:
        raise CheckoutError(400, "invalid_json", "the body is not valid JSON") from None


def _ticker_and_price(body: dict[str, Any], prices: Mapping[str, float]) -> tuple[str, float]:
    raw_ticker = body.get("ticker")
    if not isinstance(raw_ticker, str):
        raise CheckoutError(422, "invalid_ticker", "'ticker' is required and must be a string")
    try:
        market_price = get_price(raw_ticker, prices)
    except UnknownTickerError as exc:
        raise CheckoutError(422, "unknown_ticker", str(exc)) from None
    except ValueError as exc:
        raise CheckoutError(422, "invalid_ticker", str(exc)) from None
    return raw_ticker.strip().removeprefix("$").upper(), market_price


def _quantity(body: dict[str, Any]) -> int:
    quantity = body.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise CheckoutError(422, "invalid_quantity", "'quantity' is required and must be a positive integer")
    if not 0 < quantity <= MAX_QUANTITY:
        raise CheckoutError(422, "invalid_quantity", f"'quantity' must be between 1 and {MAX_QUANTITY}")
    return quantity


def _limit_price(body: dict[str, Any], ticker: str, market_price: float) -> float | None:
    limit = body.get("price")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit) or limit <= 0:
        raise CheckoutError(422, "invalid_price", "'price' must be a positive number when given")
    limit = float(limit)
    if limit < market_price:
        raise CheckoutError(
            422,
            "limit_price_below_market",
            f"the limit price {limit} is below the market price {market_price} of {ticker}",
        )
    return limit


def parse_order_body(body: Any, prices: Mapping[str, float]) -> OrderRequest:
    """The order `body` asks for, priced from `prices`, or a 422 `CheckoutError`."""
    if not isinstance(body, dict):
        raise CheckoutError(422, "invalid_request", "the body must be a JSON object")
    ticker, market_price = _ticker_and_price(body, prices)
    quantity = _quantity(body)
    return OrderRequest(ticker, quantity, _limit_price(body, ticker, market_price), market_price)


def check_authorization_details(claims: Mapping[str, Any], order: OrderRequest) -> None:
    """Refuse (403) a token whose `authorization_details` (RAR) approve another order than `order`; a token
    without them is approved by its scope alone."""
    details = claims.get("authorization_details")
    if details is None:
        return
    if not (isinstance(details, list) and approves_order(details, order.ticker, order.quantity, order.limit_price)):
        raise CheckoutError(
            403,
            "authorization_details_mismatch",
            "the token's authorization_details approve another order than this one",
            bearer_challenge("insufficient_scope"),
        )


def request_fingerprint(subject: str | None, order: OrderRequest) -> str:
    """What a replay under the same idempotency key must repeat: the caller and the order they asked for."""
    canonical = json.dumps(
        {"subject": subject, "ticker": order.ticker, "quantity": order.quantity, "price": order.limit_price},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_order_record(key: str, fingerprint: str, claims: Mapping[str, Any], order: OrderRequest) -> dict[str, Any]:
    """The row to store for `order`, filled now at its market price, for the token's subject and client."""
    return {
        "id": "ord_" + secrets.token_hex(12),
        "idempotency_key": key,
        "request_fingerprint": fingerprint,
        "subject": claims.get("sub"),
        "client_id": claims.get("azp") or claims.get("client_id"),
        "ticker": order.ticker,
        "quantity": order.quantity,
        "price": order.market_price,
        "limit_price": order.limit_price,
        "total": round(order.market_price * order.quantity, 2),
        "currency": CURRENCY,
        "status": "filled",
        "created_at": time.time(),
    }
