"""The checkout API's HTTP handlers, one module-level function per route.

Each finds what it needs on `request.app.state` (set by `devservers.checkout.server.create_checkout_app`):
`store` (`OrderStore`), `verifier` (`TokenVerifier`), `prices` (ticker -> demo price) and `faults` (the
statuses the next order requests answer with, for fault injection).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import aiosqlite
from fastapi import Request
from fastapi.responses import JSONResponse

from devservers.checkout.errors import CheckoutError, error_response
from devservers.checkout.orders import (
    check_authorization_details,
    idempotency_key,
    new_order_record,
    parse_order_body,
    read_json_body,
    request_fingerprint,
)
from devservers.checkout.store import OrderStore, order_json
from devservers.checkout.tokens import TokenVerifier
from tools.stock_prices import CURRENCY, UnknownTickerError, get_price, known_tickers

__all__ = [
    "API_PREFIX",
    "all_prices",
    "create_order",
    "get_order",
    "healthz",
    "list_orders",
    "price",
    "stats",
]

API_PREFIX = "/api/checkout"


def _store(request: Request) -> OrderStore:
    return request.app.state.store


def _verifier(request: Request) -> TokenVerifier:
    return request.app.state.verifier


def _prices(request: Request) -> Mapping[str, float]:
    return request.app.state.prices


def _faults(request: Request) -> deque[int]:
    return request.app.state.faults


def _location(row: aiosqlite.Row) -> str:
    return f"{API_PREFIX}/orders/{row['id']}"


async def healthz() -> dict[str, Any]:
    return {"ok": True}


async def all_prices(request: Request) -> dict[str, Any]:
    prices = _prices(request)
    return {"currency": CURRENCY, "prices": {t: prices[t] for t in known_tickers(prices)}}


async def price(ticker: str, request: Request) -> JSONResponse:
    try:
        value = get_price(ticker, _prices(request))
    except UnknownTickerError as exc:
        return error_response(404, "unknown_ticker", str(exc))
    except ValueError as exc:
        return error_response(422, "invalid_ticker", str(exc))
    return JSONResponse({"ticker": ticker.strip().removeprefix("$").upper(), "price": value, "currency": CURRENCY})


async def create_order(request: Request) -> JSONResponse:
    """Place the order the body asks for (201), once per `Idempotency-Key`: the same request again gets the
    same order back (200, `Idempotent-Replayed: true`), another one under that key a 409."""
    faults = _faults(request)
    if faults:  # an injected outage: answered before anything is recorded
        return error_response(faults.popleft(), "unavailable", "the checkout API is unavailable", {"Retry-After": "1"})
    claims = await _verifier(request).verify(request.headers.get("authorization"))
    key = idempotency_key(request)
    order = parse_order_body(await read_json_body(request), _prices(request))
    check_authorization_details(claims, order)
    fingerprint = request_fingerprint(claims.get("sub"), order)
    row, created = await _store(request).record_once(key, lambda: new_order_record(key, fingerprint, claims, order))
    if created:
        return JSONResponse(order_json(row), status_code=201, headers={"Location": _location(row)})
    if row["request_fingerprint"] != fingerprint:
        raise CheckoutError(
            409, "idempotency_key_reused", "this Idempotency-Key was already used for a different order"
        )
    return JSONResponse(
        order_json(row),
        status_code=200,
        headers={"Idempotent-Replayed": "true", "Location": _location(row)},
    )


async def list_orders(request: Request, limit: int = 1000) -> dict[str, Any]:
    """The caller's own orders (a token for this API; its `sub` says whose)."""
    claims = await _verifier(request).verify(request.headers.get("authorization"), require_scope=False)
    rows = await _store(request).list_orders(subject=str(claims.get("sub")), limit=max(1, min(limit, 10_000)))
    return {"orders": [order_json(r) for r in rows]}


async def get_order(order_id: str, request: Request) -> JSONResponse:
    claims = await _verifier(request).verify(request.headers.get("authorization"), require_scope=False)
    row = await _store(request).by_id(order_id)
    if row is None or row["subject"] != claims.get("sub"):  # someone else's order is not there for you
        return error_response(404, "not_found", f"no order {order_id!r}")
    return JSONResponse(order_json(row))


async def stats(request: Request) -> dict[str, Any]:
    return {"orders": await _store(request).count()}
