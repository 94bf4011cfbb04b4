"""The demo tools: `get_stock_price` and the raw `buy_stock` spending a CIBA credential at the checkout."""

from __future__ import annotations

import httpx
import pytest

from demo.stocks import (
    BINDING_MESSAGE_RE,
    binding_message_for,
    buy_stock,
    checkout_orders_url,
    get_stock_price,
    idempotency_key_for,
    make_buy_stock_tool,
)
from devservers.server_thread import free_port
from tests.jwks_helpers import CHECKOUT_AUDIENCE as AUDIENCE
from tools.base import ToolContext, ToolError, TransientToolError
from tools.ciba.credentials_context import CIBACredentials, use_ciba_credentials


def _stats(checkout) -> int:
    return httpx.get(checkout.api_url + "/stats").json()["orders"]


def _orders_of(checkout, issuer, subject: str) -> list[dict]:
    token = issuer.token(audience=AUDIENCE, subject=subject)
    return httpx.get(checkout.api_url + "/orders", headers={"Authorization": f"Bearer {token}"}).json()["orders"]


def _credentials(issuer, **claim_args) -> CIBACredentials:
    claim_args.setdefault("audience", AUDIENCE)
    return CIBACredentials(access_token=issuer.token(**claim_args), expires_in=300, scope=["openid", "stock:buy"])


def _ctx(tool_call_id: str, thread_id: str = "thread-1") -> ToolContext:
    return ToolContext(tool_call_id=tool_call_id, thread_id=thread_id, owner="auth0|alice", agent_name="Chat")


async def test_buy_stock_places_exactly_one_order_per_tool_call(issuer, checkout):
    tool = make_buy_stock_tool(checkout.url)
    args = tool.parse_arguments('{"ticker": "msft", "quantity": 100}')
    before = _stats(checkout)
    ctx = _ctx("call_buy_once")
    with use_ciba_credentials(_credentials(issuer)):
        first = await tool.run(args, ctx)
        # A retry of the same tool call (e.g. after a crash before its result was recorded).
        second = await tool.run(args, ctx)
    assert first == second == "Purchased 100 shares of MSFT at 25.0"
    assert _stats(checkout) == before + 1

    # A different tool call is a different purchase.
    with use_ciba_credentials(_credentials(issuer)):
        await tool.run(args, _ctx("call_buy_again"))
    assert _stats(checkout) == before + 2
    orders = _orders_of(checkout, issuer, "auth0|alice")
    assert [o["ticker"] for o in orders[-2:]] == ["MSFT", "MSFT"]


async def test_buy_stock_with_limit_price_reports_executed_price(issuer, checkout):
    tool = make_buy_stock_tool(checkout.api_url)  # the /api/checkout form of the URL works too
    args = tool.parse_arguments({"ticker": "MSFT", "quantity": 10, "price": 30})
    with use_ciba_credentials(_credentials(issuer)):
        assert await tool.run(args, _ctx("call_limit")) == "Purchased 10 shares of MSFT at 25.0"


async def test_buy_stock_without_credentials_is_a_tool_error(checkout):
    tool = make_buy_stock_tool(checkout.url)
    before = _stats(checkout)
    with pytest.raises(ToolError, match="buy_stock needs an approved authorization"):
        await tool.run(tool.parse_arguments({"ticker": "MSFT", "quantity": 1}), _ctx("call_no_cred"))
    assert _stats(checkout) == before


async def test_buy_stock_rejected_token_never_leaks(issuer, checkout):
    tool = make_buy_stock_tool(checkout.url)
    args = tool.parse_arguments({"ticker": "MSFT", "quantity": 1})
    before = _stats(checkout)
    for claim_args, status in (({"scope": "openid"}, "403"), ({"audience": "https://elsewhere/"}, "401")):
        credentials = _credentials(issuer, **claim_args)
        with use_ciba_credentials(credentials), pytest.raises(ToolError) as raised:
            await tool.run(args, _ctx(f"call_rejected_{status}"))
        message = str(raised.value)
        assert status in message
        assert credentials.access_token not in message
        assert credentials.access_token not in repr(raised.value)
    assert _stats(checkout) == before


async def test_buy_stock_unreachable_checkout_is_transient(issuer):
    """A checkout that cannot be reached is worth trying again later (the order is idempotent)."""
    tool = make_buy_stock_tool(f"http://127.0.0.1:{free_port()}", timeout=2)
    with use_ciba_credentials(_credentials(issuer)), pytest.raises(TransientToolError, match="could not reach"):
        await tool.run(tool.parse_arguments({"ticker": "MSFT", "quantity": 1}), _ctx("call_unreachable"))


async def test_default_buy_stock_reads_checkout_url_setting(issuer, checkout, monkeypatch):
    monkeypatch.setenv("CHECKOUT_API_URL", checkout.api_url)
    before = _stats(checkout)
    with use_ciba_credentials(_credentials(issuer)):
        result = await buy_stock.run(buy_stock.parse_arguments({"ticker": "NVDA", "quantity": 2}), _ctx("call_env"))
    assert result == "Purchased 2 shares of NVDA at 12.4"
    assert _stats(checkout) == before + 1


@pytest.mark.parametrize(
    "arguments",
    [
        {"ticker": "ZZZZ", "quantity": 1},
        {"ticker": "TOOLONG", "quantity": 1},
        {"ticker": "MS1T", "quantity": 1},
        {"ticker": "MSFT", "quantity": -5},
        {"ticker": "MSFT", "quantity": 0},
        {"ticker": "MSFT", "quantity": 2.5},
        {"ticker": "MSFT", "quantity": True},
        {"ticker": "MSFT"},
        {"ticker": "MSFT", "quantity": 1, "price": -3},
        {"ticker": "MSFT", "quantity": 1, "price": 0},
        '{"ticker": "MSFT", "quantity": ',
    ],
)
def test_buy_stock_arguments_rejected(arguments):
    with pytest.raises(ToolError, match="invalid arguments for buy_stock"):
        buy_stock.parse_arguments(arguments)


def test_buy_stock_arguments_normalised_and_named_in_error():
    args = buy_stock.parse_arguments('{"ticker": " aapl ", "quantity": "5"}')
    assert args.model_dump() == {"ticker": "AAPL", "quantity": 5, "price": None}
    with pytest.raises(ToolError, match="ZZZZ"):
        buy_stock.parse_arguments({"ticker": "zzzz", "quantity": 1})


def test_tool_schemas():
    schema = buy_stock.openai_schema()["function"]
    assert schema["name"] == "buy_stock"
    assert set(schema["parameters"]["properties"]) == {"ticker", "quantity", "price"}
    assert set(schema["parameters"]["required"]) == {"ticker", "quantity"}
    assert get_stock_price.openai_schema()["function"]["parameters"]["required"] == ["ticker"]


async def test_get_stock_price():
    args = get_stock_price.parse_arguments('{"ticker": "msft"}')
    assert await get_stock_price.run(args, _ctx("call_price")) == "MSFT is trading at 25.0 USD"
    with pytest.raises(ToolError, match="ZZZZ"):
        get_stock_price.parse_arguments({"ticker": "ZZZZ"})
    with pytest.raises(ToolError, match="QQQQ"):
        await get_stock_price.fn(ticker="QQQQ")


def test_binding_messages_follow_auth0_rule():
    assert binding_message_for("MSFT", 100) == "Buy 100 MSFT"
    assert binding_message_for("msft", 10, 30) == "Buy 10 MSFT at 30.00"
    for message in (
        binding_message_for("MSFT", 10**12, 123456789.123),
        binding_message_for("<script>", 1),
        binding_message_for("", 1),
    ):
        assert BINDING_MESSAGE_RE.fullmatch(message), message
        assert 1 <= len(message) <= 64


def test_idempotency_key_and_url_helpers():
    a = idempotency_key_for(_ctx("call_1"))
    assert a == idempotency_key_for(_ctx("call_1"))
    assert a != idempotency_key_for(_ctx("call_2"))
    assert a != idempotency_key_for(_ctx("call_1", thread_id="thread-2"))
    assert len(a) <= 255
    expected = "http://h:1/api/checkout/orders"
    for url in ("http://h:1", "http://h:1/", "http://h:1/api/checkout", "http://h:1/api/checkout/orders"):
        assert checkout_orders_url(url) == expected


@pytest.mark.parametrize(
    "price", ["Infinity", "-Infinity", "NaN", "1e309", "1e60", "1000000.01", "12.345", "0", "-1", "true"]
)
def test_buy_stock_refuses_a_limit_price_its_approval_could_not_show_exactly(price: str) -> None:
    """Approved "Buy 10 MSFT at 30.25" must be the order placed: no inf/nan (httpx would refuse to send it
    after the approval), no absurd size, no more than cents."""
    from demo.stocks import make_buy_stock_tool
    from tools.base import ToolError

    with pytest.raises(ToolError, match="price"):
        make_buy_stock_tool().parse_arguments(f'{{"ticker": "MSFT", "quantity": 10, "price": {price}}}')


def test_the_largest_order_still_has_its_whole_binding_message() -> None:
    from demo.prices import MAX_QUANTITY
    from demo.stocks import MAX_LIMIT_PRICE, binding_message_for, make_buy_stock_tool

    args = make_buy_stock_tool().parse_arguments(
        {"ticker": "GOOGL", "quantity": MAX_QUANTITY, "price": MAX_LIMIT_PRICE}
    )
    assert binding_message_for(**args.model_dump()) == "Buy 1000000 GOOGL at 1000000.00"
    assert make_buy_stock_tool().parse_arguments('{"ticker": "MSFT", "quantity": 1, "price": 30.25}').price == 30.25
