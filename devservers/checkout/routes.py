"""The checkout API's HTTP handlers, one module-level function per route.

Each finds what it needs on `request.app.state` (set by `devservers.checkout.server.create_checkout_app`):
`store` (`OrderStore`), `verifier` (`TokenVerifier`), `prices` (ticker -> demo price) and `faults`, the
injected faults in the order they happen: `("fail", status)` answers the next order request with `status`
before anything is recorded; `("lose", status)` records the next new order and loses its answer (replaced
by `status`, or with None held back `LOST_ANSWER_HOLD_SECONDS`, until the client has given up).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiosqlite
from fastapi import Request
from fastapi.responses import JSONResponse

from demo.prices import CURRENCY, UnknownTickerError, get_price, known_tickers
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
LOST_ANSWER_HOLD_SECONDS = 15.0
"""How long a lost answer is held back: longer than the agents' checkout timeout (10 s by default)."""


def _store(request: Request) -> OrderStore:
    return request.app.state.store


def _verifier(request: Request) -> TokenVerifier:
    return request.app.state.verifier


def _prices(request: Request) -> Mapping[str, float]:
    return request.app.state.prices


def _faults(request: Request) -> deque[tuple[str, int | None]]:
    return request.app.state.faults


def _injected_outage(request: Request) -> JSONResponse | None:
    """The answer of an injected outage, if one is queued (before anything is read or recorded)."""
    faults = _faults(request)
    if not faults or faults[0][0] != "fail":
        return None
    _, status = faults.popleft()
    return error_response(status or 503, "unavailable", "the checkout API is unavailable", {"Retry-After": "1"})


def _answer_lost(request: Request) -> tuple[bool, int | None]:
    """Whether the order just recorded loses its answer, and the status that replaces it (None: held)."""
    faults = _faults(request)
    if not faults or faults[0][0] != "lose":
        return False, None
    return True, faults.popleft()[1]


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
    outage = _injected_outage(request)
    if outage is not None:
        return outage
    claims = await _verifier(request).verify(request.headers.get("authorization"))
    key = idempotency_key(request)
    order = parse_order_body(await read_json_body(request), _prices(request))
    check_authorization_details(claims, order)
    fingerprint = request_fingerprint(claims.get("sub"), order)
    row, created = await _store(request).record_once(key, lambda: new_order_record(key, fingerprint, claims, order))
    lost, status = _answer_lost(request) if created else (False, None)
    if lost:  # an injected fault: the order is placed, and its answer never reaches the client
        if status is not None:
            return error_response(status, "gateway_error", "the gateway gave up on the checkout API")
        await asyncio.sleep(LOST_ANSWER_HOLD_SECONDS)
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


async def list_orders(request: Request, limit: int = 1000, idempotency_key: str | None = None) -> Any:
    """The caller's own orders (a token for this API; its `sub` says whose); with `idempotency_key`, the one
    placed under that key, if any: how a client whose answer was lost finds out whether its order exists."""
    outage = _injected_outage(request)
    if outage is not None:
        return outage
    claims = await _verifier(request).verify(request.headers.get("authorization"), require_scope=False)
    rows = await _store(request).list_orders(
        subject=str(claims.get("sub")), limit=max(1, min(limit, 10_000)), idempotency_key=idempotency_key
    )
    return {"orders": [order_json(r) for r in rows]}


async def get_order(order_id: str, request: Request) -> JSONResponse:
    claims = await _verifier(request).verify(request.headers.get("authorization"), require_scope=False)
    row = await _store(request).by_id(order_id)
    if row is None or row["subject"] != claims.get("sub"):  # someone else's order is not there for you
        return error_response(404, "not_found", f"no order {order_id!r}")
    return JSONResponse(order_json(row))


async def stats(request: Request) -> dict[str, Any]:
    return {"orders": await _store(request).count()}
