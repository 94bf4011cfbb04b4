"""`create_checkout_app` (the checkout API as an ASGI app) and `CheckoutServer`, which runs it on 127.0.0.1.

The app is assembled here and only here: its routes, its error handlers, `LocalOnly` in front, the order
store opened and closed with the app's lifespan, and the state the handlers of
`devservers.checkout.routes` read.
"""

from __future__ import annotations

import collections
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware

from auth.settings import DEFAULT_CHECKOUT_AUDIENCE
from demo.prices import DEMO_PRICES
from devservers.checkout import routes
from devservers.checkout.errors import EXCEPTION_HANDLERS
from devservers.checkout.routes import API_PREFIX
from devservers.checkout.store import OrderStore
from devservers.checkout.tokens import TokenVerifier
from devservers.local_only import LocalOnly
from devservers.server_thread import ServerThread

__all__ = ["DEFAULT_CHECKOUT_AUDIENCE", "ROUTES", "CheckoutServer", "create_checkout_app"]


@asynccontextmanager
async def _store_open(app: FastAPI) -> AsyncIterator[None]:
    """The lifespan: the order store is open (and migrated) while the app serves, closed after."""
    store: OrderStore = app.state.store
    await store.db()
    try:
        yield
    finally:
        await store.close()


_Endpoint = Callable[..., Awaitable[Any]]

ROUTES: Sequence[tuple[str, str, _Endpoint]] = (
    ("GET", "/healthz", routes.healthz),
    ("GET", f"{API_PREFIX}/prices", routes.all_prices),
    ("GET", API_PREFIX + "/prices/{ticker}", routes.price),
    ("POST", f"{API_PREFIX}/orders", routes.create_order),
    ("GET", f"{API_PREFIX}/orders", routes.list_orders),
    ("GET", API_PREFIX + "/orders/{order_id}", routes.get_order),
    ("GET", f"{API_PREFIX}/stats", routes.stats),
)
"""(method, path, handler) of every route, in matching order."""


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
    (`demo.prices.DEMO_PRICES`); `db_path` to an in-memory database (orders then die with the app).
    """
    price_table = {t.upper(): float(p) for t, p in (DEMO_PRICES if prices is None else prices).items()}
    verifier = TokenVerifier(issuer=issuer, audience=audience, jwks_url=jwks_url, algorithms=algorithms, leeway=leeway)
    store = OrderStore(db_path)

    app = FastAPI(
        title="Demo checkout API",
        middleware=[Middleware(LocalOnly)],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=_store_open,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for method, path, endpoint in ROUTES:
        app.add_api_route(path, endpoint, methods=[method])
    app.state.store = store
    app.state.verifier = verifier
    app.state.prices = price_table
    app.state.faults = collections.deque()  # injected faults, in the order they happen (see `routes`)
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
        """Answer the next `count` order requests (placing or listing orders) with `status`, before recording
        anything: an outage, as tests need one. Real HTTP answers from the real server, so the client side is
        exercised for real."""
        self.app.state.faults.extend([("fail", status)] * count)

    def lose_next_answers(self, count: int = 1, status: int | None = None) -> None:
        """Record the next `count` new orders, then lose their answers: answer `status` instead (a gateway's
        502/504), or with None hold the answer until the client's timeout has passed. The client cannot
        know whether its order was placed."""
        self.app.state.faults.extend([("lose", status)] * count)

    def recover(self) -> None:
        """End every injected fault still queued."""
        self.app.state.faults.clear()

    def start(self, timeout: float = 15.0) -> CheckoutServer:
        super().start(timeout)
        return self

    def __enter__(self) -> CheckoutServer:
        return self.start()
