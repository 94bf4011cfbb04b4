"""Interrupts keep their type and every field through JSON, pickle and a real Ray object store."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import pytest

from tools.ciba.client import CIBAError, CIBATransientError, InvalidBindingMessage
from tools.ciba.interrupts import (
    AccessDeniedInterrupt,
    AsyncAuthorizationInterrupt,
    AuthorizationPendingInterrupt,
    AuthorizationPollingInterrupt,
    AuthorizationRequestExpiredInterrupt,
    AuthorizationRequestFailedInterrupt,
    InvalidGrantInterrupt,
    UserDoesNotHavePushNotificationsInterrupt,
    is_interrupt,
)

FIELDS = {
    "tool_name": "buy_stock",
    "tool_call_id": "call_abc",
    "thread_id": "t-1",
    "expires_at": 1_900_000_000.25,
    "interval": 6,
    "next_check_at": 1_899_999_990.5,
    "binding_message": "Buy 10 MSFT",
    "scopes": ["stock:buy"],
}

EXPECTED_CODES = {
    AuthorizationPendingInterrupt: "ASYNC_AUTHORIZATION_AUTHORIZATION_PENDING",
    AuthorizationPollingInterrupt: "ASYNC_AUTHORIZATION_AUTHORIZATION_POLLING_ERROR",
    AccessDeniedInterrupt: "ASYNC_AUTHORIZATION_ACCESS_DENIED",
    AuthorizationRequestExpiredInterrupt: "ASYNC_AUTHORIZATION_AUTHORIZATION_REQUEST_EXPIRED",
    InvalidGrantInterrupt: "ASYNC_AUTHORIZATION_INVALID_GRANT",
    UserDoesNotHavePushNotificationsInterrupt: "ASYNC_AUTHORIZATION_USER_DOES_NOT_HAVE_PUSH_NOTIFICATIONS",
}


def examples() -> list[AsyncAuthorizationInterrupt]:
    return [
        AuthorizationPendingInterrupt(**FIELDS),
        AuthorizationPollingInterrupt(retry_after=6.0, reason="slow_down", **FIELDS),
        AccessDeniedInterrupt(**FIELDS),
        AuthorizationRequestExpiredInterrupt("custom message", **FIELDS),
        InvalidGrantInterrupt(**FIELDS),
        UserDoesNotHavePushNotificationsInterrupt(**FIELDS),
        AuthorizationRequestFailedInterrupt(error="unknown_user_id", **FIELDS),
        AuthorizationPendingInterrupt(),  # every field empty
    ]


def assert_same(a: AsyncAuthorizationInterrupt, b: object) -> None:
    assert type(b) is type(a)
    assert isinstance(b, AsyncAuthorizationInterrupt)
    assert b.to_dict() == a.to_dict()
    assert str(b) == str(a) and b.args == a.args


def test_codes_are_the_auth0_js_codes() -> None:
    for cls, code in EXPECTED_CODES.items():
        assert cls.code == code
        assert cls(**FIELDS).to_dict()["code"] == code
    assert {cls.terminal for cls in EXPECTED_CODES} == {True, False}
    assert not AuthorizationPendingInterrupt.terminal and not AuthorizationPollingInterrupt.terminal


@pytest.mark.parametrize("interrupt", examples(), ids=lambda i: type(i).__name__)
def test_json_round_trip(interrupt: AsyncAuthorizationInterrupt) -> None:
    text = interrupt.to_json()
    data = json.loads(text)
    assert set(FIELDS) <= set(data) and {"code", "message"} <= set(data)
    assert_same(interrupt, AsyncAuthorizationInterrupt.from_json(text))
    assert_same(interrupt, AsyncAuthorizationInterrupt.from_dict(interrupt.to_dict()))
    assert_same(interrupt, type(interrupt).from_dict(data))
    assert is_interrupt(interrupt) and is_interrupt(data) and is_interrupt(interrupt, interrupt.code)


@pytest.mark.parametrize("interrupt", examples(), ids=lambda i: type(i).__name__)
def test_pickle_round_trip(interrupt: AsyncAuthorizationInterrupt) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert_same(interrupt, pickle.loads(pickle.dumps(interrupt, protocol=protocol)))


def test_from_dict_is_strict_about_codes_and_lenient_about_new_fields() -> None:
    with pytest.raises(ValueError):
        AsyncAuthorizationInterrupt.from_dict({"code": "SOMETHING_ELSE"})
    with pytest.raises(ValueError):
        AccessDeniedInterrupt.from_dict(AuthorizationPendingInterrupt().to_dict())
    newer = {**AccessDeniedInterrupt(**FIELDS).to_dict(), "added_in_v2": 1}
    assert AsyncAuthorizationInterrupt.from_dict(newer).to_dict() == AccessDeniedInterrupt(**FIELDS).to_dict()
    assert not is_interrupt(ValueError()) and not is_interrupt({"code": "X"})
    assert not is_interrupt(AccessDeniedInterrupt(), AuthorizationPendingInterrupt.code)


def test_no_secret_fields() -> None:
    """The schema has no room for an auth_req_id or a token."""
    keys = set(AuthorizationPollingInterrupt(**FIELDS).to_dict()) | set(AuthorizationRequestFailedInterrupt().to_dict())
    assert not {k for k in keys if "token" in k or "auth_req" in k or "secret" in k}


def test_client_errors_pickle_too() -> None:
    for error in (
        CIBAError("unknown_user_id", "no such user", 400),
        InvalidBindingMessage("too long"),
        CIBATransientError("down", status=503, retry_after=2.0, maybe_sent=True),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)


@pytest.fixture(scope="module")
def ray_module() -> Iterator[object]:
    """A real local Ray for this module (reusing one already started by another test module)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


def test_ray_object_store_round_trip(ray_module: object) -> None:
    import ray

    for interrupt in examples():
        assert_same(interrupt, ray.get(ray.put(interrupt)))


def test_raised_in_a_ray_task_arrives_as_the_same_interrupt(ray_module: object) -> None:
    import ray

    @ray.remote(max_retries=0)
    def ask() -> None:
        raise AuthorizationPollingInterrupt(retry_after=6.0, reason="slow_down", **FIELDS)

    @ray.remote
    def echo(data: dict) -> AsyncAuthorizationInterrupt:
        return AsyncAuthorizationInterrupt.from_dict(data)

    with pytest.raises(AuthorizationPollingInterrupt) as caught:
        ray.get(ask.remote())
    assert is_interrupt(caught.value, AuthorizationPollingInterrupt.code)
    cause = getattr(caught.value, "cause", caught.value)
    assert cause.to_dict() == AuthorizationPollingInterrupt(retry_after=6.0, reason="slow_down", **FIELDS).to_dict()
    sent = AccessDeniedInterrupt(**FIELDS)
    assert_same(sent, ray.get(echo.remote(sent.to_dict())))


@pytest.mark.parametrize(
    ("text", "fitted"),
    [
        ("Pay A&B Café 42.50€", "Pay A+B Cafe 42.50 EUR"),
        ("Book 2 seats to Paris", "Book 2 seats to Paris"),
        (
            "Submit expense: 42.50 USD at Acme Corporation International Holdings Ltd (ref 99)",
            "Submit expense: 42.50 USD at Acme Corporation International",
        ),
        ("x" * 100, "x" * 64),
    ],
)
def test_any_text_is_fitted_into_a_binding_message_the_provider_accepts(text: str, fitted: str) -> None:
    from tools import fit_binding_message, validate_binding_message

    assert validate_binding_message(fit_binding_message(text)) == fitted


def test_a_text_with_nothing_showable_is_refused_clearly() -> None:
    from tools import InvalidBindingMessage, fit_binding_message

    with pytest.raises(InvalidBindingMessage, match="nothing of"):
        fit_binding_message("«»")
