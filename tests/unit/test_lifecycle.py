"""The order lifecycle table and the decisions of finish and settle (no I/O).

The expected tables below are written out independently of ``shared.lifecycle`` (ADR
0002's diagram), so a change to the module's table fails here until ADR and test agree.
"""

from __future__ import annotations

import functools
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from shared import errors
from shared.lifecycle import (
    ACTIVATE,
    DEBT_ALLOWED,
    NEW_ORDER,
    ORDER_TRANSITIONS,
    PAYMENT_TRANSITIONS,
    REFUSAL_ERRORS,
    REJECT,
    RIDER_VISIBLE,
    OperationState,
    OrderStatus,
    PaymentOutcome,
    PaymentStatus,
    Refusal,
    Transition,
    check_no_debt,
    decide_finish,
    decide_settle,
    decide_settle_debt,
    is_ended,
    is_riding,
    is_visible,
    order_may_become,
    payment_may_become,
    payment_outcome,
    refusal_error,
)

OS, PS = OrderStatus, PaymentStatus

ALLOWED_ORDER = {
    (OS.STARTING, OS.ACTIVE),
    (OS.STARTING, OS.REJECTED),
    (OS.ACTIVE, OS.FINISHED),
    (OS.ACTIVE, OS.CANCELLED),
}
ALLOWED_PAYMENT = {
    (PS.HOLDING, PS.HELD),
    (PS.HOLDING, PS.FAILED),
    (PS.HELD, PS.PENDING),
    (PS.PENDING, PS.CHARGED),
    (PS.PENDING, PS.RELEASED),
    (PS.PENDING, PS.DEBT),
    (PS.DEBT, PS.CHARGED),  # support settled the debt (docs/operator-api.md)
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(OS, OS)))
def test_order_transition(current: OrderStatus, target: OrderStatus) -> None:
    assert order_may_become(current, target) == ((current, target) in ALLOWED_ORDER)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(PS, PS)))
def test_payment_transition(current: PaymentStatus, target: PaymentStatus) -> None:
    assert payment_may_become(current, target) == ((current, target) in ALLOWED_PAYMENT)


def test_tables_cover_every_status() -> None:
    assert set(ORDER_TRANSITIONS) == set(OS)
    assert set(PAYMENT_TRANSITIONS) == set(PS)
    assert NEW_ORDER == (OS.STARTING, PS.HOLDING)


def test_a_step_outside_the_table_cannot_be_built() -> None:
    """Every combination of order and payment change; a step keeps its order status
    (settle) or changes it along the table, and always changes its payment status so."""
    for (o_from, o_to), (p_from, p_to) in itertools.product(
        itertools.product(OS, OS), itertools.product(PS, PS)
    ):
        allowed = ((o_from, o_to) in ALLOWED_ORDER or o_from == o_to) and (
            p_from,
            p_to,
        ) in ALLOWED_PAYMENT

        build = functools.partial(
            Transition, status_from=o_from, status_to=o_to, payment_from=p_from, payment_to=p_to
        )
        if allowed:
            assert build().payment_to == p_to
        else:
            with pytest.raises(ValueError, match="not allowed"):
                build()


def test_the_steps() -> None:
    assert (ACTIVATE.status_from, ACTIVATE.status_to) == (OS.STARTING, OS.ACTIVE)
    assert (ACTIVATE.payment_from, ACTIVATE.payment_to) == (PS.HOLDING, PS.HELD)
    assert (REJECT.status_from, REJECT.status_to) == (OS.STARTING, OS.REJECTED)
    assert (REJECT.payment_from, REJECT.payment_to) == (PS.HOLDING, PS.FAILED)


def test_what_a_rider_sees() -> None:
    assert set(RIDER_VISIBLE) == {OS.ACTIVE, OS.FINISHED, OS.CANCELLED}
    assert [s for s in OS if is_visible(s)] == [OS.ACTIVE, OS.FINISHED, OS.CANCELLED]
    assert [s for s in OS if is_riding(s)] == [OS.ACTIVE]
    assert [s for s in OS if is_ended(s)] == [OS.FINISHED, OS.CANCELLED]
    assert is_riding("active")
    assert is_visible("finished")
    assert not is_visible("starting")


STARTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_finish_above_the_free_threshold_charges_the_ride() -> None:
    decision = decide_finish(
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=8, milliseconds=999),
        price_per_minute=24,
        price_unlock=45,
        free_ride_seconds=5,
    )
    assert decision.transition.status_to == OS.FINISHED
    assert (decision.transition.payment_from, decision.transition.payment_to) == (
        PS.HELD,
        PS.PENDING,
    )
    assert (decision.duration_seconds, decision.total_amount) == (8, 48)  # DOMAIN.md vector
    assert decision.rides_count_delta == 1


@pytest.mark.parametrize("seconds", [0, 4, 4.999, -3])
def test_finish_under_the_free_threshold_cancels_for_nothing(seconds: float) -> None:
    decision = decide_finish(
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=seconds),
        price_per_minute=24,
        price_unlock=45,
        free_ride_seconds=5,
    )
    assert decision.transition.status_to == OS.CANCELLED
    assert decision.total_amount == 0
    assert decision.rides_count_delta == 0
    assert decision.duration_seconds == max(0, int(seconds))


def test_finish_of_a_very_long_ride_is_64_bit() -> None:
    decision = decide_finish(
        started_at=STARTED,
        finished_at=STARTED + timedelta(days=40_000),
        price_per_minute=10_000,
        price_unlock=0,
        free_ride_seconds=5,
    )
    assert decision.total_amount > 2**31


@pytest.mark.parametrize(
    ("amount", "outcome", "status", "state", "charged", "debt"),
    [
        (48, PaymentOutcome.DONE, PS.CHARGED, OperationState.DONE, 48, 0),
        (0, PaymentOutcome.DONE, PS.RELEASED, OperationState.DONE, 0, 0),
        (48, PaymentOutcome.DECLINED, PS.DEBT, OperationState.GAVE_UP, 0, 48),
    ],
)
def test_settle(
    amount: int,
    outcome: PaymentOutcome,
    status: PaymentStatus,
    state: str,
    charged: int,
    debt: int,
) -> None:
    decision = decide_settle(amount, outcome, attempts=3, max_attempts=3)
    assert decision is not None
    assert (decision.payment_from, decision.payment_to) == (PS.PENDING, status)
    assert payment_may_become(decision.payment_from, decision.payment_to)
    assert decision.operation_state == state
    assert (decision.total_charged_delta, decision.debt_delta) == (charged, debt)


def test_a_confirmed_charge_settles_on_any_try() -> None:
    assert decide_settle(48) == decide_settle(48, PaymentOutcome.DONE, attempts=1, max_attempts=9)


@pytest.mark.parametrize("attempts", [1, 3, 4, 50, 10_000])
def test_an_unknown_outcome_never_becomes_debt(attempts: int) -> None:
    """Issue 8: late, lost or unreachable answers leave the charge owed, however long."""
    assert decide_settle(48, PaymentOutcome.UNKNOWN, attempts=attempts, max_attempts=3) is None


def test_a_decline_becomes_debt_from_the_last_attempt_on() -> None:
    assert decide_settle(48, PaymentOutcome.DECLINED, attempts=2, max_attempts=3) is None
    for attempts in (3, 4, 100):
        decision = decide_settle(48, PaymentOutcome.DECLINED, attempts=attempts, max_attempts=3)
        assert decision is not None
        assert (decision.payment_to, decision.debt_delta) == (PS.DEBT, 48)
    # a release (a charge of 0) is never debt
    assert decide_settle(0, PaymentOutcome.DECLINED, attempts=9, max_attempts=3) is None


@pytest.mark.parametrize(
    ("declined", "found", "found_amount", "outcome"),
    [
        (False, "done", 48, PaymentOutcome.DONE),  # landed, its answer late or lost
        (True, "done", 48, PaymentOutcome.DONE),  # an earlier call landed
        (False, "done", 47, PaymentOutcome.UNKNOWN),  # another amount: a person looks
        (True, "absent", 0, PaymentOutcome.DECLINED),
        (False, "absent", 0, PaymentOutcome.UNKNOWN),  # an earlier call may still land
        (True, "in_progress", 0, PaymentOutcome.UNKNOWN),
        (False, "in_progress", 0, PaymentOutcome.UNKNOWN),
        (True, None, 0, PaymentOutcome.UNKNOWN),  # a decline is believed once looked up
        (False, None, 0, PaymentOutcome.UNKNOWN),
    ],
)
def test_payment_outcome(
    declined: bool, found: str | None, found_amount: int, outcome: PaymentOutcome
) -> None:
    assert (
        payment_outcome(declined=declined, found=found, found_amount=found_amount, amount=48)
        == outcome
    )


def test_a_settled_debt_is_charged_and_leaves_the_debt() -> None:
    decision = decide_settle_debt(48)
    assert (decision.payment_from, decision.payment_to) == (PS.DEBT, PS.CHARGED)
    assert payment_may_become(decision.payment_from, decision.payment_to)
    assert decision.operation_state == OperationState.DONE
    assert (decision.total_charged_delta, decision.debt_delta) == (48, -48)


def test_debt_refuses_a_ride() -> None:
    assert DEBT_ALLOWED == 0
    check_no_debt("u1", 0)
    with pytest.raises(errors.UserHasDebt, match="owes 1"):
        check_no_debt("u1", 1)


@pytest.mark.parametrize("refusal", list(Refusal))
def test_each_refusal_becomes_its_domain_error(refusal: Refusal) -> None:
    error = refusal_error(refusal, offer_id="o1", scooter_id="s1", user_id="u1", max_rides=1)
    assert isinstance(error, REFUSAL_ERRORS[refusal])
    assert error.code == refusal  # the problem's code is the refusal's name
    assert error.status in (402, 409)


def test_refusal_errors_are_the_documented_ones() -> None:
    assert dict(REFUSAL_ERRORS) == {
        Refusal.OFFER_ALREADY_USED: errors.OfferAlreadyUsed,
        Refusal.SCOOTER_BUSY: errors.ScooterBusy,
        Refusal.USER_HAS_DEBT: errors.UserHasDebt,
        Refusal.TOO_MANY_ACTIVE_RIDES: errors.TooManyActiveRides,
    }


def test_an_unknown_refusal_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no_such_reason"):
        refusal_error("no_such_reason", offer_id="o", scooter_id="s", user_id="u", max_rides=1)
