"""The demo tools: `get_stock_price` (no confirmation) and the RAW `buy_stock`.

`buy_stock` is meant to be wrapped by `with_async_user_confirmation`, which runs it inside
`use_ciba_credentials(cred)` once the user approved the CIBA request. It spends that credential's access
token on the checkout API with an `Idempotency-Key` derived from the tool call (`current_tool_context()`), so
running it again for the same tool call (a retry, a crash before its result was recorded) never buys twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import httpx
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from auth.http_pool import shared_client
from demo.prices import CURRENCY, MAX_QUANTITY, UnknownTickerError, get_price, normalize_ticker
from runtime.backoff import exponential_delay, retry_after_seconds
from tools.base import (
    OutcomeUnknownError,
    Tool,
    ToolContext,
    ToolError,
    TransientToolError,
    current_tool_context,
)
from tools.ciba.credentials_context import get_ciba_credentials
from tools.ciba.types import BINDING_MESSAGE_RE

CHECKOUT_API_PREFIX = "/api/checkout"


MAX_LIMIT_PRICE = 1_000_000.0
"""The highest limit price accepted: with it, 5-letter tickers and `MAX_QUANTITY`, the binding message
("Buy 1000000 GOOGL at 1000000.00") always fits Auth0's 64 characters whole."""


class StockToolSettings(BaseSettings):
    """Where the demo checkout API lives (`CHECKOUT_API_URL`; with or without the `/api/checkout` path)."""

    model_config = SettingsConfigDict(extra="ignore")

    checkout_api_url: str = "http://127.0.0.1:5000" + CHECKOUT_API_PREFIX
    checkout_api_timeout: float = 10.0


def checkout_orders_url(checkout_url: str) -> str:
    """`http://host:port`, `.../api/checkout` or `.../api/checkout/orders` -> the orders endpoint."""
    base = checkout_url.strip().rstrip("/")
    if base.endswith(CHECKOUT_API_PREFIX + "/orders"):
        return base
    if not base.endswith(CHECKOUT_API_PREFIX):
        base += CHECKOUT_API_PREFIX
    return base + "/orders"


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _known_ticker(value: Any) -> str:
    ticker = normalize_ticker(value)
    try:
        get_price(ticker)
    except UnknownTickerError as exc:
        raise ValueError(str(exc)) from None
    return ticker


class StockPriceParams(BaseModel):
    ticker: str = Field(description="The stock ticker symbol, e.g. MSFT")

    @field_validator("ticker", mode="before")
    @classmethod
    def _ticker(cls, value: Any) -> str:
        return _known_ticker(value)


class BuyStockParams(BaseModel):
    ticker: str = Field(description="The stock ticker symbol (1-5 letters), e.g. MSFT")
    quantity: int = Field(gt=0, le=MAX_QUANTITY, description="The number of shares to buy")
    price: float | None = Field(
        default=None,
        gt=0,
        le=MAX_LIMIT_PRICE,
        allow_inf_nan=False,
        description="Optional limit price per share (at most 2 decimals); omit to buy at the market price",
    )

    @field_validator("ticker", mode="before")
    @classmethod
    def _ticker(cls, value: Any) -> str:
        return _known_ticker(value)

    @field_validator("quantity", "price", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        return _reject_bool(value)

    @field_validator("price")
    @classmethod
    def _cents(cls, value: float | None) -> float | None:
        # the user approves "Buy 10 MSFT at 30.25": the order must be exactly what the message shows
        if value is not None and abs(value * 100 - round(value * 100)) > 1e-6:
            raise ValueError("a limit price has at most 2 decimals")
        return value


def binding_message_for(ticker: str, quantity: int, price: float | None = None) -> str:
    """A CIBA binding message valid under Auth0's rule, e.g. "Buy 100 MSFT" or "Buy 10 MSFT at 30.00"."""
    symbol = re.sub(r"[^A-Za-z0-9]", "", str(ticker)).upper()[:12] or "stock"
    message = f"Buy {int(quantity)} {symbol}"
    if price is not None:
        message += f" at {float(price):.2f}"
    message = re.sub(r"[^A-Za-z0-9 +\-_.,:#]", "", message)[:64].strip()
    return message if BINDING_MESSAGE_RE.fullmatch(message) else "Buy stock"


def idempotency_key_for(ctx: ToolContext, tool_name: str = "buy_stock") -> str:
    """A stable key for one tool call of one thread: retries of that call reuse it, other calls never do."""
    material = "\x1f".join([tool_name, ctx.agent_name, ctx.thread_id, ctx.tool_call_id])
    return f"{tool_name}-" + hashlib.sha256(material.encode()).hexdigest()


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        code, detail = body.get("error"), body.get("detail")
        if isinstance(code, dict):  # OpenAI-style nesting, just in case
            code, detail = code.get("code"), code.get("message")
        return ": ".join(str(p) for p in (code, detail) if p) or f"HTTP {response.status_code}"
    return f"HTTP {response.status_code}"


NOT_PROCESSED_STATUSES = frozenset({429, 503})
"""Answers that say the order was not acted on: trying again is all there is to do."""
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})
"""Answers after which the order may exist (a gateway gave up on a checkout that may have committed)."""
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Failures before the request left: the order certainly does not exist because of it."""
QUICK_RETRIES = 2
"""Tries again at once (after 0.2 s, then 0.4 s) before leaving the order to the agent's durable retry."""
DEFAULT_RETRY_AFTER = 2.0
"""Seconds before the agent tries an order again after the checkout failed transiently (no Retry-After)."""
UNKNOWN_TEXT = (
    "the checkout API did not confirm whether the order was placed (its answer was lost and it cannot be "
    "reached to look it up); the order will be looked up again by its idempotency key"
)


def _retry_after(response: httpx.Response | None) -> float:
    """The checkout's `Retry-After` (seconds or an HTTP date), between 2 s and 300 s."""
    seconds = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
    return min(300.0, max(DEFAULT_RETRY_AFTER, seconds if seconds is not None else DEFAULT_RETRY_AFTER))


def _headers(access_token: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


async def find_order(url: str, *, access_token: str, idempotency_key: str, request_timeout: float) -> dict | None:
    """The order placed under `idempotency_key`, None if the checkout says there is none; raises
    `OutcomeUnknownError` when it cannot tell (unreachable, failing, or an unreadable answer)."""
    try:
        response = await shared_client().get(
            url,
            params={"idempotency_key": idempotency_key},
            headers=_headers(access_token),
            timeout=request_timeout,
        )
        orders = response.json().get("orders") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        orders = None
    if not isinstance(orders, list):
        raise OutcomeUnknownError(f"buy_stock: {UNKNOWN_TEXT}", DEFAULT_RETRY_AFTER)
    return next((order for order in orders if isinstance(order, dict)), None)


async def _post_with_quick_retries(
    url: str, body: dict[str, Any], headers: dict[str, str], request_timeout: float
) -> tuple[httpx.Response | None, bool]:
    """POST the order, retried briefly while that is harmless (same Idempotency-Key); the last answer (None:
    no answer at all) and whether any attempt may have placed the order."""
    response: httpx.Response | None = None
    maybe_placed = False
    for attempt in range(QUICK_RETRIES + 1):
        try:
            response = await shared_client().post(url, json=body, headers=headers, timeout=request_timeout)
        except httpx.HTTPError as exc:
            response = None
            maybe_placed = maybe_placed or not isinstance(exc, NOT_SENT_ERRORS)
        else:
            maybe_placed = maybe_placed or response.status_code in AMBIGUOUS_STATUSES
            if response.status_code not in NOT_PROCESSED_STATUSES | AMBIGUOUS_STATUSES:
                return response, maybe_placed
        if attempt < QUICK_RETRIES:
            await asyncio.sleep(exponential_delay(attempt + 1, 0.2, 1.0))
    return response, maybe_placed


async def _place_order(
    url: str,
    body: dict[str, Any],
    *,
    access_token: str,
    idempotency_key: str,
    request_timeout: float,
    outcome_unknown: bool = False,
) -> dict[str, Any]:
    """Place the order once, whatever happens on the way.

    After a run whose outcome was unknown (`outcome_unknown`), look the order up by its Idempotency-Key
    first. Transient failures (no connection, a timeout, 429 or 5xx) are retried here briefly under the
    same key, then raised so the agent retries later on a durable schedule: `OutcomeUnknownError` if any
    attempt may have placed it (and a look-up could not tell), else `TransientToolError`. A 4xx is final
    (`ToolError`)."""
    if outcome_unknown:
        found = await find_order(
            url, access_token=access_token, idempotency_key=idempotency_key, request_timeout=request_timeout
        )
        if found is not None:
            return found
    headers = _headers(access_token, idempotency_key)
    response, maybe_placed = await _post_with_quick_retries(url, body, headers, request_timeout)
    status = response.status_code if response is not None else None
    if status in (200, 201):
        return _order_from(response)
    if status is None or status in NOT_PROCESSED_STATUSES | AMBIGUOUS_STATUSES:
        if maybe_placed:
            found = await find_order(
                url, access_token=access_token, idempotency_key=idempotency_key, request_timeout=request_timeout
            )
            if found is not None:
                return found
        if status is None:
            raise TransientToolError(
                "buy_stock could not reach the checkout API; it will try again", DEFAULT_RETRY_AFTER
            )
        raise TransientToolError(
            f"the checkout API is unavailable (HTTP {status}); it will try again", _retry_after(response)
        )
    raise ToolError(f"buy_stock failed: {_refusal(response, access_token)}")


def _order_from(response: httpx.Response | None) -> dict[str, Any]:
    try:
        order = response.json() if response is not None else None
    except ValueError:
        order = None
    if not isinstance(order, dict):
        raise ToolError("the checkout API answered with an unreadable order")
    return order


def _refusal(response: httpx.Response, access_token: str) -> str:
    """Why the checkout refused the order (a 4xx, or a 5xx it will not retry), without the token."""
    status = response.status_code
    detail = _redact(_error_detail(response), access_token)
    if status == 401:
        return f"the checkout API rejected the authorization (401 {detail})"
    if status == 403:
        return f"the authorization does not allow buying stock (403 {detail})"
    if status == 409:
        return f"the checkout API refused a conflicting retry of this order (409 {detail})"
    if 400 <= status < 500:
        return f"the checkout API rejected the order ({status} {detail})"
    return f"the checkout API failed (HTTP {status})"


def make_buy_stock_tool(checkout_url: str | None = None, *, timeout: float | None = None) -> Tool:
    """The RAW `buy_stock` tool posting to `checkout_url` (default: the `CHECKOUT_API_URL` setting, read at
    call time). Wrap it with `with_async_user_confirmation` before giving it to an agent."""

    async def buy_stock(ticker: str, quantity: int, price: float | None = None) -> str:
        credentials = get_ciba_credentials()
        if credentials is None or not credentials.access_token:
            raise ToolError("buy_stock needs an approved authorization")
        ctx = current_tool_context()
        settings = StockToolSettings()
        url = checkout_orders_url(checkout_url or settings.checkout_api_url)
        body: dict[str, Any] = {"ticker": ticker, "quantity": quantity}
        if price is not None:
            body["price"] = price
        order = await _place_order(
            url,
            body,
            access_token=credentials.access_token,
            idempotency_key=idempotency_key_for(ctx),
            request_timeout=timeout if timeout is not None else settings.checkout_api_timeout,
            outcome_unknown=ctx.outcome_unknown,
        )
        executed = order.get("price")
        shares = order.get("quantity", quantity)
        symbol = order.get("ticker", ticker)
        if not isinstance(executed, int | float):
            raise ToolError("the checkout API answered without an executed price")
        return f"Purchased {shares} shares of {symbol} at {float(executed)}"

    return Tool(
        buy_stock,
        name="buy_stock",
        description=(
            "Buy shares of a stock for the user. The user must approve the purchase on their device; "
            "give `price` only if the user asked for a limit price."
        ),
        parameters=BuyStockParams,
    )


#: The RAW buy tool posting to `CHECKOUT_API_URL`.
buy_stock = make_buy_stock_tool()


async def _get_stock_price(ticker: str) -> str:
    try:
        value = get_price(ticker)
    except (UnknownTickerError, ValueError) as exc:
        raise ToolError(str(exc)) from None
    return f"{normalize_ticker(ticker)} is trading at {value} {CURRENCY}"


get_stock_price = Tool(
    _get_stock_price,
    name="get_stock_price",
    description="Get the current (demo) price of a stock by its ticker symbol.",
    parameters=StockPriceParams,
)

__all__ = [
    "BuyStockParams",
    "StockPriceParams",
    "StockToolSettings",
    "binding_message_for",
    "buy_stock",
    "checkout_orders_url",
    "get_stock_price",
    "idempotency_key_for",
    "make_buy_stock_tool",
]
