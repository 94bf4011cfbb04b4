"""The demo checkout API: the protected resource a CIBA-approved `buy_stock` call spends its token on.

`POST /api/checkout/orders` takes `{"ticker", "quantity", "price"?}` (price = optional limit price; the order
fills at the demo market price, and is refused if the limit is below it), a `Authorization: Bearer <JWT>`
and a required `Idempotency-Key`. The JWT must be an RS256 token from `issuer` (signature checked against
the issuer's JWKS, found through OIDC discovery, cached, refreshed on an unknown `kid`), for `audience`, unexpired,
with `stock:buy` in its `scope`. Each idempotency key records at most one order: a replay with the same body
returns the same order (200, `Idempotent-Replayed: true`), a different body gets 409. Orders live in SQLite,
so a file-backed API keeps its orders across restarts.

Every error is JSON: `{"error": <code>, "detail": <text>}`; no error ever echoes the token.

Dev/test helpers: `GET /api/checkout/orders` (the caller's own orders, a token for this API required),
`GET /api/checkout/orders/{id}` (the caller's only),
`GET /api/checkout/stats` -> `{"orders": n}`, `GET /api/checkout/prices[/{ticker}]`, `GET /healthz`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from auth.verifier import InvalidTokenError, JWTVerifier, SigningKeysUnavailableError
from devservers.local_only import LocalOnly
from devservers.server_thread import ServerThread
from tools.order_details import approves_order
from tools.stock_prices import (
    CURRENCY,
    DEMO_PRICES,
    MAX_QUANTITY,
    UnknownTickerError,
    get_price,
    known_tickers,
)

log = logging.getLogger(__name__)

#: The audience the original sample's checkout API used; the CIBA wrapper asks for tokens with it.
DEFAULT_CHECKOUT_AUDIENCE = "http://localhost:5000/api/checkout"
REQUIRED_SCOPE = "stock:buy"
API_PREFIX = "/api/checkout"
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class CheckoutError(Exception):
    """An error answered as `{"error": code, "detail": detail}` with `status`."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def _error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


# --------------------------------------------------------------------------------------------------------
# Token verification


def _bearer_challenge(error: str | None = None, scope: str | None = None) -> dict[str, str]:
    parts = ['Bearer realm="checkout"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def _token_scopes(claims: Mapping[str, Any]) -> set[str]:
    scopes: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(str(v) for v in value)
    return scopes


class TokenVerifier:
    """Verify a checkout access token with the project's one JWT verifier (`auth.verifier`): signature
    against the issuer's keys (`jwks_uri` from OIDC discovery unless `jwks_url` is given: no provider's
    paths are assumed), asymmetric algorithm allow-list, `iss`, `aud`, `exp`/`nbf`; then the scope."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        algorithms: Sequence[str] = ("RS256",),
        leeway: float = 5.0,
        required_scope: str = REQUIRED_SCOPE,
    ) -> None:
        if not algorithms or any(a.lower() == "none" or a.upper().startswith("HS") for a in algorithms):
            raise ValueError("the checkout API only accepts asymmetric signature algorithms")
        self.issuer = issuer
        self.audience = audience
        self.required_scope = required_scope
        self.jwks = JWTVerifier(
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            jwks_uri=jwks_url,
            leeway=leeway,
            required_claims=("exp", "iss", "aud"),
            min_refresh_interval=1.0,
        )

    async def verify(self, authorization: str | None, *, require_scope: bool = True) -> dict[str, Any]:
        """The claims of a valid checkout token (with the purchase scope, unless `require_scope` is off:
        reading one's own orders needs a token for this API, not a purchase approval)."""
        if not authorization:
            raise CheckoutError(
                401,
                "missing_token",
                "an 'Authorization: Bearer <token>' header is required",
                _bearer_challenge(),
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CheckoutError(
                401,
                "invalid_request",
                "the Authorization header must use the Bearer scheme",
                _bearer_challenge("invalid_request"),
            )
        try:
            claims = await self.jwks.verify(token)
        except SigningKeysUnavailableError:
            raise CheckoutError(503, "jwks_unavailable", "the issuer's signing keys could not be fetched") from None
        except InvalidTokenError as exc:
            raise CheckoutError(401, "invalid_token", exc.reason, _bearer_challenge("invalid_token")) from None
        if require_scope and self.required_scope not in _token_scopes(claims):
            raise CheckoutError(
                403,
                "insufficient_scope",
                f"the token lacks the {self.required_scope!r} scope",
                _bearer_challenge("insufficient_scope", self.required_scope),
            )
        return claims


# --------------------------------------------------------------------------------------------------------
# Order storage

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE orders (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT NOT NULL UNIQUE,
        request_fingerprint TEXT NOT NULL,
        subject TEXT,
        client_id TEXT,
        ticker TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        price REAL NOT NULL,
        limit_price REAL,
        total REAL NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX orders_subject ON orders(subject);
    """,
]

_ORDER_COLUMNS = (
    "id, idempotency_key, request_fingerprint, subject, client_id, ticker, quantity, price, limit_price, "
    "total, currency, status, created_at"
)


def _order_json(row: aiosqlite.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "ticker": row["ticker"],
        "quantity": row["quantity"],
        "price": row["price"],
        "limit_price": row["limit_price"],
        "total": row["total"],
        "currency": row["currency"],
        "subject": row["subject"],
        "client_id": row["client_id"],
        "created_at": row["created_at"],
    }


class OrderStore:
    """Orders in SQLite (a file, or `:memory:` when no path is given), one per idempotency key."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = ":memory:" if path is None else os.fspath(path)
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.lock = asyncio.Lock()
        self._db: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()

    async def db(self) -> aiosqlite.Connection:
        if self._db is not None:
            return self._db
        async with self._open_lock:
            if self._db is None:
                db = await aiosqlite.connect(self.path)
                db.row_factory = aiosqlite.Row
                await db.execute("PRAGMA busy_timeout = 5000")
                if self.path != ":memory:":
                    await db.execute("PRAGMA journal_mode = WAL")
                await self._migrate(db)
                self._db = db
        return self._db

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
        # a restarted server runs on a new event loop, and an asyncio lock stays bound to the loop it
        # first waited on: give the next one fresh locks
        self.lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()

    async def by_key(self, key: str) -> aiosqlite.Row | None:
        db = await self.db()
        async with db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE idempotency_key = ?", (key,)) as cur:
            return await cur.fetchone()

    async def by_id(self, order_id: str) -> aiosqlite.Row | None:
        db = await self.db()
        async with db.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = ?", (order_id,)) as cur:
            return await cur.fetchone()

    async def insert(self, order: dict[str, Any]) -> None:
        db = await self.db()
        columns = [c.strip() for c in _ORDER_COLUMNS.split(",")]
        await db.execute(
            f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES ({', '.join('?' for _ in columns)})",
            tuple(order[c] for c in columns),
        )
        await db.commit()

    async def list_orders(self, *, subject: str | None = None, limit: int = 1000) -> list[aiosqlite.Row]:
        db = await self.db()
        sql = f"SELECT {_ORDER_COLUMNS} FROM orders"
        params: tuple[Any, ...] = ()
        if subject is not None:
            sql += " WHERE subject = ?"
            params = (subject,)
        sql += " ORDER BY seq LIMIT ?"
        async with db.execute(sql, (*params, limit)) as cur:
            return list(await cur.fetchall())

    async def count(self) -> int:
        db = await self.db()
        async with db.execute("SELECT COUNT(*) FROM orders") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


# --------------------------------------------------------------------------------------------------------
# Request validation


def _parse_order_body(body: Any, prices: Mapping[str, float]) -> tuple[str, int, float | None, float]:
    """(ticker, quantity, limit_price, market_price) or a 422 `CheckoutError`."""
    if not isinstance(body, dict):
        raise CheckoutError(422, "invalid_request", "the body must be a JSON object")
    raw_ticker = body.get("ticker")
    if not isinstance(raw_ticker, str):
        raise CheckoutError(422, "invalid_ticker", "'ticker' is required and must be a string")
    try:
        market_price = get_price(raw_ticker, prices)
    except UnknownTickerError as exc:
        raise CheckoutError(422, "unknown_ticker", str(exc)) from None
    except ValueError as exc:
        raise CheckoutError(422, "invalid_ticker", str(exc)) from None
    ticker = raw_ticker.strip().removeprefix("$").upper()
    quantity = body.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise CheckoutError(422, "invalid_quantity", "'quantity' is required and must be a positive integer")
    if not 0 < quantity <= MAX_QUANTITY:
        raise CheckoutError(422, "invalid_quantity", f"'quantity' must be between 1 and {MAX_QUANTITY}")
    limit = body.get("price")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit) or limit <= 0:
            raise CheckoutError(422, "invalid_price", "'price' must be a positive number when given")
        limit = float(limit)
        if limit < market_price:
            raise CheckoutError(
                422,
                "limit_price_below_market",
                f"the limit price {limit} is below the market price {market_price} of {ticker}",
            )
    return ticker, quantity, limit, market_price


def _idempotency_key(request: Request) -> str:
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


def _fingerprint(subject: str | None, ticker: str, quantity: int, limit: float | None) -> str:
    canonical = json.dumps({"subject": subject, "ticker": ticker, "quantity": quantity, "price": limit}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------
# The app


def create_checkout_app(
    *,
    issuer: str,
    audience: str,
    jwks_url: str | None = None,
    prices: Mapping[str, float] | None = None,
    db_path: str | os.PathLike[str] | None = None,
    algorithms: Sequence[str] = ("RS256",),
    leeway: float = 5.0,
) -> FastAPI:
    """The checkout API as an ASGI app.

    `jwks_url` defaults to the `jwks_uri` of the issuer's discovery document; `prices` to the shared demo table
    (`tools.stock_prices.DEMO_PRICES`); `db_path` to an in-memory database (orders then die with the app).
    """
    price_table: Mapping[str, float] = {
        t.upper(): float(p) for t, p in (DEMO_PRICES if prices is None else prices).items()
    }
    verifier = TokenVerifier(issuer=issuer, audience=audience, jwks_url=jwks_url, algorithms=algorithms, leeway=leeway)
    store = OrderStore(db_path)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await store.db()
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(title="Demo checkout API", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(LocalOnly)
    app.state.store = store
    app.state.verifier = verifier
    app.state.prices = price_table
    app.state.faults = collections.deque()  # statuses the next order requests answer with (fault injection)

    @app.exception_handler(CheckoutError)
    async def _checkout_error(_request: Request, exc: CheckoutError) -> JSONResponse:
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error_response(422, "invalid_request", problems)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("checkout API error: %s", type(exc).__name__)
        return _error_response(500, "internal_error", "the checkout API failed")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get(f"{API_PREFIX}/prices")
    async def all_prices() -> dict[str, Any]:
        return {"currency": CURRENCY, "prices": {t: price_table[t] for t in known_tickers(price_table)}}

    @app.get(API_PREFIX + "/prices/{ticker}")
    async def price(ticker: str) -> JSONResponse:
        try:
            value = get_price(ticker, price_table)
        except UnknownTickerError as exc:
            return _error_response(404, "unknown_ticker", str(exc))
        except ValueError as exc:
            return _error_response(422, "invalid_ticker", str(exc))
        return JSONResponse({"ticker": ticker.strip().removeprefix("$").upper(), "price": value, "currency": CURRENCY})

    @app.post(f"{API_PREFIX}/orders")
    async def create_order(request: Request) -> JSONResponse:
        if app.state.faults:  # an injected outage: answered before anything is recorded
            status = app.state.faults.popleft()
            return _error_response(status, "unavailable", "the checkout API is unavailable", {"Retry-After": "1"})
        claims = await verifier.verify(request.headers.get("authorization"))
        key = _idempotency_key(request)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            raise CheckoutError(400, "invalid_json", "the body is not valid JSON") from None
        ticker, quantity, limit, market_price = _parse_order_body(body, price_table)
        details = claims.get("authorization_details")
        if details is not None and not (isinstance(details, list) and approves_order(details, ticker, quantity, limit)):
            raise CheckoutError(
                403,
                "authorization_details_mismatch",
                "the token's authorization_details approve another order than this one",
                _bearer_challenge("insufficient_scope"),
            )
        subject = claims.get("sub")
        fingerprint = _fingerprint(subject, ticker, quantity, limit)

        async with store.lock:
            existing = await store.by_key(key)
            if existing is None:
                order = {
                    "id": "ord_" + secrets.token_hex(12),
                    "idempotency_key": key,
                    "request_fingerprint": fingerprint,
                    "subject": subject,
                    "client_id": claims.get("azp") or claims.get("client_id"),
                    "ticker": ticker,
                    "quantity": quantity,
                    "price": market_price,
                    "limit_price": limit,
                    "total": round(market_price * quantity, 2),
                    "currency": CURRENCY,
                    "status": "filled",
                    "created_at": time.time(),
                }
                try:
                    await store.insert(order)
                except sqlite3.IntegrityError:  # another process holding the same file won the race
                    existing = await store.by_key(key)
                    if existing is None:
                        raise
                else:
                    created = await store.by_key(key)
                    assert created is not None
                    log.info("order %s: %d %s at %s", order["id"], quantity, ticker, market_price)
                    return JSONResponse(
                        _order_json(created),
                        status_code=201,
                        headers={"Location": f"{API_PREFIX}/orders/{order['id']}"},
                    )
        if existing["request_fingerprint"] != fingerprint:
            raise CheckoutError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different order",
            )
        return JSONResponse(
            _order_json(existing),
            status_code=200,
            headers={"Idempotent-Replayed": "true", "Location": f"{API_PREFIX}/orders/{existing['id']}"},
        )

    @app.get(f"{API_PREFIX}/orders")
    async def list_orders(request: Request, limit: int = 1000) -> dict[str, Any]:
        """The caller's own orders (a token for this API; its `sub` says whose)."""
        claims = await verifier.verify(request.headers.get("authorization"), require_scope=False)
        rows = await store.list_orders(subject=str(claims.get("sub")), limit=max(1, min(limit, 10_000)))
        return {"orders": [_order_json(r) for r in rows]}

    @app.get(API_PREFIX + "/orders/{order_id}")
    async def get_order(order_id: str, request: Request) -> JSONResponse:
        claims = await verifier.verify(request.headers.get("authorization"), require_scope=False)
        row = await store.by_id(order_id)
        if row is None or row["subject"] != claims.get("sub"):  # someone else's order is not there for you
            return _error_response(404, "not_found", f"no order {order_id!r}")
        return JSONResponse(_order_json(row))

    @app.get(f"{API_PREFIX}/stats")
    async def stats() -> dict[str, Any]:
        return {"orders": await store.count()}

    return app


class CheckoutServer(ServerThread):
    """The checkout API on 127.0.0.1 in a background thread. `api_url` is the base the tool posts to."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str = DEFAULT_CHECKOUT_AUDIENCE,
        jwks_url: str | None = None,
        prices: Mapping[str, float] | None = None,
        db_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        app = create_checkout_app(issuer=issuer, audience=audience, jwks_url=jwks_url, prices=prices, db_path=db_path)
        super().__init__(app, host=host, port=port)

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next `count` order requests with `status` (before recording anything): an outage, as
        tests need one. Real HTTP answers from the real server, so the client side is exercised for real."""
        self.app.state.faults.extend([status] * count)

    def start(self, timeout: float = 15.0) -> CheckoutServer:
        super().start(timeout)
        return self

    def __enter__(self) -> CheckoutServer:
        return self.start()
