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

Modules, each importing only those above it:

- `errors`: `CheckoutError` and the handlers that answer every failure as `{"error", "detail"}`;
- `tokens`: `TokenVerifier`, the bearer-token and scope check in front of every order route;
- `store`: `OrderStore`, the orders in SQLite, at most one per idempotency key;
- `orders`: reading an order request (body, `Idempotency-Key`, the token's approval) into a record;
- `routes`: the HTTP handlers, which find the store, verifier and prices on `request.app.state`;
- `server`: `create_checkout_app` and `CheckoutServer`, which run it on 127.0.0.1.

`devservers.checkout_api` re-exports the public names.
"""
