"""The demo checkout API, by its old address: the code lives in the `devservers.checkout` package.

`agentrt.stack`, the tests and the benchmarks import `CheckoutServer` (and friends) from here; this module
only re-exports, so those imports keep working. See `devservers.checkout` for what the API does.
"""

from __future__ import annotations

from devservers.checkout.errors import CheckoutError
from devservers.checkout.orders import MAX_IDEMPOTENCY_KEY_LENGTH
from devservers.checkout.routes import API_PREFIX
from devservers.checkout.server import DEFAULT_CHECKOUT_AUDIENCE, CheckoutServer, create_checkout_app
from devservers.checkout.store import OrderStore
from devservers.checkout.tokens import REQUIRED_SCOPE, TokenVerifier

__all__ = [
    "API_PREFIX",
    "DEFAULT_CHECKOUT_AUDIENCE",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "REQUIRED_SCOPE",
    "CheckoutError",
    "CheckoutServer",
    "OrderStore",
    "TokenVerifier",
    "create_checkout_app",
]
