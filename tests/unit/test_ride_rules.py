"""Rides gone wrong: abandoned rides, the cost cap, operator ends and refunds (pure rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.errors import EndBeforeStart, EndInFuture, InvalidRefund, RefundExceedsCharge
from shared.lifecycle import decide_finish
from shared.ride_rules import (
    abandoned_cutoff,
    abandoned_end,
    capped_cost,
    check_refund,
    is_abandoned,
    operator_end,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOUR = 3600


@pytest.mark.parametrize(
    ("cost", "cap", "expected"),
    [
        (500, 10_000, 500),
        (10_000, 10_000, 10_000),
        (12_345, 10_000, 10_000),
        (12_345, 0, 12_345),
        (12_345, None, 12_345),
        (0, 1, 0),
    ],
)
def test_capped_cost(cost: int, cap: int | None, expected: int) -> None:
    assert capped_cost(cost, cap) == expected


def test_a_ride_is_abandoned_only_past_the_limit() -> None:
    limit = 12 * HOUR
    assert not is_abandoned(NOW - timedelta(seconds=limit), NOW, limit)
    assert is_abandoned(NOW - timedelta(seconds=limit + 1), NOW, limit)
    assert not is_abandoned(NOW - timedelta(hours=1), NOW, limit)
    assert abandoned_cutoff(NOW, limit) == NOW - timedelta(hours=12)


def test_an_abandoned_ride_ends_at_the_limit_not_when_noticed() -> None:
    started = NOW - timedelta(days=3)
    assert abandoned_end(started, 12 * HOUR) == started + timedelta(hours=12)


def test_operator_end_charges_up_to_the_given_time() -> None:
    started = NOW - timedelta(hours=2)
    assert operator_end(started, started + timedelta(minutes=30), NOW) == 1800
    assert operator_end(started, NOW, NOW) == 2 * HOUR
    assert operator_end(started, started, NOW) == 0


def test_operator_end_refuses_before_start_and_future() -> None:
    started = NOW - timedelta(hours=2)
    with pytest.raises(EndBeforeStart):
        operator_end(started, started - timedelta(seconds=1), NOW)
    with pytest.raises(EndInFuture):
        operator_end(started, NOW + timedelta(seconds=1), NOW)


def test_refunds_never_exceed_the_charge() -> None:
    check_refund(charged=300, refunded=0, amount=300)
    check_refund(charged=300, refunded=200, amount=100)
    with pytest.raises(RefundExceedsCharge):
        check_refund(charged=300, refunded=200, amount=101)
    with pytest.raises(RefundExceedsCharge):
        check_refund(charged=0, refunded=0, amount=1)
    with pytest.raises(InvalidRefund):
        check_refund(charged=300, refunded=0, amount=0)
    with pytest.raises(InvalidRefund):
        check_refund(charged=300, refunded=0, amount=-5)


def test_a_finish_decision_is_capped() -> None:
    common: dict[str, Any] = {
        "started_at": NOW - timedelta(days=1),
        "finished_at": NOW,
        "price_per_minute": 24,
        "price_unlock": 45,
        "free_ride_seconds": 5,
    }
    assert decide_finish(**common, max_cost=500).total_amount == 500
    assert decide_finish(**common).total_amount == 86_400 * 24 // 60 + 45  # 0: no cap
    assert decide_finish(**common, max_cost=10**9).total_amount == 86_400 * 24 // 60 + 45
