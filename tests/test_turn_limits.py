"""Review hole 6: one user cannot start turns without bound (the ingress's `TurnLimits`, per replica)."""

from __future__ import annotations

import pytest

from agentrt.ingress.errors import HttpProblem
from agentrt.ingress.turn_limits import WINDOW_SECONDS, TurnLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_turns_per_minute_are_capped_per_user_with_a_retry_after() -> None:
    clock = Clock()
    limits = TurnLimits(clock)
    for _ in range(3):
        limits.take("alice", per_minute=3, concurrent=10)()
        clock.now += 1.0
    with pytest.raises(HttpProblem) as refused:
        limits.take("alice", per_minute=3, concurrent=10)
    assert refused.value.status_code == 429 and refused.value.error == "too_many_turns"
    assert int((refused.value.headers or {})["Retry-After"]) == WINDOW_SECONDS - 3
    limits.take("bob", per_minute=3, concurrent=10)()  # another user is not held up
    clock.now += WINDOW_SECONDS
    limits.take("alice", per_minute=3, concurrent=10)()  # a minute later alice may again


def test_concurrent_turns_are_capped_and_given_back_once() -> None:
    limits = TurnLimits(Clock())
    first = limits.take("alice", per_minute=100, concurrent=2)
    limits.take("alice", per_minute=100, concurrent=2)
    with pytest.raises(HttpProblem) as refused:
        limits.take("alice", per_minute=100, concurrent=2)
    assert refused.value.status_code == 429
    first()
    first()  # giving back twice frees one slot, not two
    limits.take("alice", per_minute=100, concurrent=2)
    with pytest.raises(HttpProblem):
        limits.take("alice", per_minute=100, concurrent=2)
