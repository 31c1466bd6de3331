"""The order lifecycle: statuses, allowed transitions and the decisions of each ride step.

Pure (no I/O, no framework). Every rule about *when* an order may change and *what the
change is* lives here; the database functions of ``migrations/sql/0004_ride_steps.sql``
only apply a decided step atomically and keep the guards that need the rows (an offer
starts one order, a scooter has one ride, "only if still <status>"). Terms are those of
``docs/glossary.md``; the state machine is ADR 0002, the one-round-trip steps ADR 0005.

A ride has five steps (DOMAIN.md "Orders (rides)"):

=========  ======================  =========================  ==============================
step       order status            payment status             bookkeeping
=========  ======================  =========================  ==============================
start      (new) → starting        (new) → holding            claim offer, scooter, ride slot
activate   starting → active       holding → held             hold confirmed
reject     starting → rejected     holding → failed           frees offer, scooter, slot
finish     active → finished |     held → pending             rides_count +1 if finished;
           cancelled                                          the charge is owed
settle     (finished | cancelled)  pending → charged |        total_charged or debt grows
                                   released | debt            by the amount
=========  ======================  =========================  ==============================

Operator commands (docs/operator-api.md) add: a force-end is a finish; a settled debt
moves ``debt → charged`` (:func:`decide_settle_debt`); a refund changes no status.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import overload

import msgspec

from shared.errors import (
    DomainError,
    OfferAlreadyUsed,
    ScooterBusy,
    TooManyActiveRides,
    UserHasDebt,
)
from shared.ride_rules import capped_cost

# --- statuses -----------------------------------------------------------------------------


class OrderStatus(enum.StrEnum):
    """Where an order is in its life (ADR 0002). Stored in ``orders.status``."""

    STARTING = "starting"  # written before the hold; never shown as a ride
    ACTIVE = "active"  # the rider is riding
    FINISHED = "finished"  # ended at or above free_ride_seconds; costs the ride's price
    CANCELLED = "cancelled"  # ended under free_ride_seconds; costs 0
    REJECTED = "rejected"  # the hold failed; nothing was charged, the offer is free again


class PaymentStatus(enum.StrEnum):
    """Where an order's money is (ADR 0002). Stored in ``orders.payment_status``."""

    HOLDING = "holding"  # hold requested, not yet confirmed
    HELD = "held"  # the deposit is held on the rider's card
    PENDING = "pending"  # ride ended, charge owed and not yet confirmed (retried)
    CHARGED = "charged"  # final amount charged, the rest of the hold released
    RELEASED = "released"  # a cancelled (free) ride: the whole hold was released
    DEBT = "debt"  # payments declined the charge to the end: the amount is the rider's debt
    FAILED = "failed"  # the hold failed (order rejected)


class OperationKind(enum.StrEnum):
    """A money movement we owe payments (``payment_operations.kind``, ADR 0002)."""

    HOLD = "hold"  # hold the deposit (due: the start never confirmed it → undo the start)
    CHARGE = "charge"  # charge the final amount with ``clear`` (0 releases the whole hold)
    RELEASE = "release"  # release the hold of a rejected start
    # release the whole hold of a ride whose charge became debt (docs/operator-api.md)
    RELEASE_DEBT_HOLD = "release_debt_hold"


class OperationState(enum.StrEnum):
    """Whether an owed money movement is still owed (``payment_operations.state``)."""

    PENDING = "pending"
    DONE = "done"
    GAVE_UP = "gave_up"  # a charge that became debt, a start undone


# --- transitions --------------------------------------------------------------------------

ORDER_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.STARTING: frozenset({OrderStatus.ACTIVE, OrderStatus.REJECTED}),
    OrderStatus.ACTIVE: frozenset({OrderStatus.FINISHED, OrderStatus.CANCELLED}),
    OrderStatus.FINISHED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
}
"""Allowed ``orders.status`` changes (ADR 0002); every other pair is refused."""

PAYMENT_TRANSITIONS: Mapping[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.HOLDING: frozenset({PaymentStatus.HELD, PaymentStatus.FAILED}),
    PaymentStatus.HELD: frozenset({PaymentStatus.PENDING}),
    PaymentStatus.PENDING: frozenset(
        {PaymentStatus.CHARGED, PaymentStatus.RELEASED, PaymentStatus.DEBT}
    ),
    PaymentStatus.CHARGED: frozenset(),
    PaymentStatus.RELEASED: frozenset(),
    PaymentStatus.DEBT: frozenset({PaymentStatus.CHARGED}),  # support settled the debt
    PaymentStatus.FAILED: frozenset(),
}
"""Allowed ``orders.payment_status`` changes (ADR 0002); every other pair is refused."""

NEW_ORDER = (OrderStatus.STARTING, PaymentStatus.HOLDING)
"""Status and payment status an order is written with at start (ADR 0002)."""


def order_may_become(current: OrderStatus, target: OrderStatus) -> bool:
    """Whether ``orders.status`` may change from ``current`` to ``target`` (ADR 0002)."""
    return target in ORDER_TRANSITIONS[current]


def payment_may_become(current: PaymentStatus, target: PaymentStatus) -> bool:
    """Whether ``orders.payment_status`` may change from ``current`` to ``target``."""
    return target in PAYMENT_TRANSITIONS[current]


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One step's change of an order: applied only if the order is still ``status_from``
    (``payment_from`` for settle, whose order status does not change)."""

    status_from: OrderStatus
    status_to: OrderStatus
    payment_from: PaymentStatus
    payment_to: PaymentStatus

    def __post_init__(self) -> None:
        if self.status_from != self.status_to and not order_may_become(
            self.status_from, self.status_to
        ):
            raise ValueError(f"order {self.status_from} → {self.status_to} is not allowed")
        if not payment_may_become(self.payment_from, self.payment_to):
            raise ValueError(f"payment {self.payment_from} → {self.payment_to} is not allowed")


ACTIVATE = Transition(
    status_from=OrderStatus.STARTING,
    status_to=OrderStatus.ACTIVE,
    payment_from=PaymentStatus.HOLDING,
    payment_to=PaymentStatus.HELD,
)
"""The hold was confirmed: the ride begins (ADR 0002, "Start")."""

REJECT = Transition(
    status_from=OrderStatus.STARTING,
    status_to=OrderStatus.REJECTED,
    payment_from=PaymentStatus.HOLDING,
    payment_to=PaymentStatus.FAILED,
)
"""The hold failed or never confirmed: the start is undone (ADR 0002, "Start")."""


# --- who sees what ------------------------------------------------------------------------

RIDER_VISIBLE: tuple[OrderStatus, ...] = (
    OrderStatus.ACTIVE,
    OrderStatus.FINISHED,
    OrderStatus.CANCELLED,
)
"""Order statuses that exist for the rider (views, screens, history); a ``starting`` or
``rejected`` order answers as if it did not exist (DOMAIN.md "Orders (rides)")."""


def is_visible(status: str) -> bool:
    """Whether an order in ``status`` is shown to the rider (a ride)."""
    return status in RIDER_VISIBLE


def is_riding(status: str) -> bool:
    """Whether an order in ``status`` is a ride in progress: its screen shows the running
    cost, its view never expires, and finishing it ends it (DOMAIN.md "Orders (rides)")."""
    return status == OrderStatus.ACTIVE


def is_ended(status: str) -> bool:
    """Whether a visible order's ride is over (finished or cancelled): a finish
    answers its stored result instead of ending it again (DOMAIN.md: idempotent finish)."""
    return is_visible(status) and not is_riding(status)


# --- debt ---------------------------------------------------------------------------------

DEBT_ALLOWED = 0
"""The most a rider may owe and still get an offer or start a ride (DOMAIN.md "Pricing"
rule 4 and "When rides go wrong": a settled debt lets the rider ride again)."""


def check_no_debt(user_id: str, debt: int, *, source: str = "") -> None:
    """Refuse a rider who owes more than :data:`DEBT_ALLOWED` (money in currency units).

    ``debt`` is what the users service reports (``current_debt``) or the charges payments
    declined (``user_summary.debt``, :func:`decide_settle`); ``source`` words the refusal's detail.
    Raises :class:`~shared.errors.UserHasDebt` (402 ``user_has_debt``).
    """
    if debt > DEBT_ALLOWED:
        raise UserHasDebt(f"user {user_id} owes {debt}{source}; settle it to ride")


# --- refusals of the start step -----------------------------------------------------------


class Refusal(enum.StrEnum):
    """Why the database refused a start (ADR 0005: SQLSTATE ``SC409``, message = the code).
    Each code equals the ``code`` of the domain error it becomes (:func:`refusal_error`)."""

    OFFER_ALREADY_USED = "offer_already_used"  # an offer starts at most one order
    SCOOTER_BUSY = "scooter_busy"  # a scooter has at most one active order
    USER_HAS_DEBT = "user_has_debt"  # a rider who owes gets no ride
    TOO_MANY_ACTIVE_RIDES = "too_many_active_rides"  # max_active_rides_per_user reached


REFUSAL_ERRORS: Mapping[Refusal, type[DomainError]] = {
    Refusal.OFFER_ALREADY_USED: OfferAlreadyUsed,
    Refusal.SCOOTER_BUSY: ScooterBusy,
    Refusal.USER_HAS_DEBT: UserHasDebt,
    Refusal.TOO_MANY_ACTIVE_RIDES: TooManyActiveRides,
}
"""The domain error (and so the HTTP problem) of each refusal."""


def refusal_error(
    code: str, *, offer_id: object, scooter_id: str, user_id: str, max_rides: int
) -> DomainError:
    """The domain error of a start the database refused with ``code``.

    Raises ``ValueError`` for a code that is not a :class:`Refusal` (a bug, never a 4xx).
    """
    refusal = Refusal(code)
    detail = {
        Refusal.OFFER_ALREADY_USED: f"offer {offer_id} has already started a ride",
        Refusal.SCOOTER_BUSY: f"scooter {scooter_id} is already in a ride",
        Refusal.USER_HAS_DEBT: f"user {user_id} has an unpaid debt",
        Refusal.TOO_MANY_ACTIVE_RIDES: f"user {user_id} already has {max_rides} active ride(s)",
    }[refusal]
    return REFUSAL_ERRORS[refusal](detail)


# --- what a ride costs ---------------------------------------------------------------------


def ride_cost(
    seconds: int,
    price_per_minute: int,
    price_unlock: int,
    free_ride_seconds: int,
    *,
    max_charged_seconds: int | None = None,
) -> int:
    """Cost of a ride of ``seconds`` (whole seconds), in currency units: 0 under the free
    threshold, else per-second proration, floored, plus the unlock price (DOMAIN.md
    "Orders (rides)": 8 s at 24/min + 45 → 48). The command side charges it at finish;
    the read side shows it as the running cost of an active ride.

    A ride longer than ``max_charged_seconds`` (setting ``rides.max_charged_seconds``) is
    charged as if it lasted exactly that long, so a ride left running for days or years
    (an app that crashed, a clock gone wrong) still finishes with a bounded amount: with
    the tariff bounds of the settings the cost stays far below 2**63 (docs/boundaries.md).
    """
    if is_free_ride(seconds, free_ride_seconds):
        return 0
    if max_charged_seconds is not None:
        seconds = min(seconds, max_charged_seconds)
    return seconds * price_per_minute // 60 + price_unlock


def ride_charge(
    seconds: int,
    price_per_minute: int,
    price_unlock: int,
    free_ride_seconds: int,
    *,
    max_charged_seconds: int | None = None,
    max_cost: int = 0,
) -> int:
    """What a ride of ``seconds`` is charged, in currency units: :func:`ride_cost`
    lowered to the ride cost cap ``max_cost`` (0 = no cap; docs/rides-gone-wrong.md).

    The one function of both sides: finish charges it, the ride screen shows it as
    the running cost of an active ride, so the screen never shows more than the charge.
    """
    return capped_cost(
        ride_cost(
            seconds,
            price_per_minute,
            price_unlock,
            free_ride_seconds,
            max_charged_seconds=max_charged_seconds,
        ),
        max_cost,
    )


def is_free_ride(seconds: int, free_ride_seconds: int) -> bool:
    """A ride under ``free_ride_seconds`` is cancelled and costs nothing (DOMAIN.md)."""
    return seconds < free_ride_seconds


# --- decisions of finish and settle -------------------------------------------------------


class FinishDecision(msgspec.Struct, frozen=True, kw_only=True):
    """How an active ride ends (DOMAIN.md "Orders (rides)", ADR 0002 "Finish").

    ``duration_seconds`` whole seconds; ``total_amount`` in currency units, the amount the
    charge operation owes (0 for a cancelled ride: clearing 0 releases the whole hold);
    ``rides_count_delta`` what ``user_summary.rides_count`` grows by.
    """

    transition: Transition
    finished_at: datetime
    duration_seconds: int
    total_amount: int
    rides_count_delta: int


def decide_finish(
    *,
    started_at: datetime,
    finished_at: datetime,
    price_per_minute: int,
    price_unlock: int,
    free_ride_seconds: int,
    max_cost: int = 0,
    max_charged_seconds: int | None = None,
) -> FinishDecision:
    """End a ride that started at ``started_at`` (UTC) at ``finished_at`` (UTC).

    ``duration = finish - start`` in whole seconds (never negative); under
    ``free_ride_seconds`` the ride is cancelled and costs 0, otherwise it is finished and
    costs :func:`ride_cost` (DOMAIN.md "Orders (rides)") for at most ``max_charged_seconds``
    of riding, and at most ``max_cost`` (the ride cost cap, docs/rides-gone-wrong.md;
    0 = no cap).
    """
    seconds = max(0, int((finished_at - started_at).total_seconds()))
    cancelled = is_free_ride(seconds, free_ride_seconds)
    return FinishDecision(
        transition=Transition(
            status_from=OrderStatus.ACTIVE,
            status_to=OrderStatus.CANCELLED if cancelled else OrderStatus.FINISHED,
            payment_from=PaymentStatus.HELD,
            payment_to=PaymentStatus.PENDING,
        ),
        finished_at=finished_at,
        duration_seconds=seconds,
        total_amount=ride_charge(
            seconds,
            price_per_minute,
            price_unlock,
            free_ride_seconds,
            max_charged_seconds=max_charged_seconds,
            max_cost=max_cost,
        ),
        rides_count_delta=0 if cancelled else 1,
    )


class SettleDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The recorded outcome of an owed charge (ADR 0002 "Worker").

    Money in currency units: ``total_charged_delta`` and ``debt_delta`` are what
    ``user_summary.total_charged`` and ``user_summary.debt`` grow by; ``operation_state``
    closes the charge operation.
    """

    payment_from: PaymentStatus
    payment_to: PaymentStatus
    operation_state: OperationState
    total_charged_delta: int
    debt_delta: int


class PaymentOutcome(enum.StrEnum):
    """What became of one owed money movement, as far as payments has told us (ADR 0002).

    Only a definite answer about the operation's idempotency key is ``done`` or
    ``declined``; everything else is ``unknown`` and is never recorded as an outcome.
    """

    DONE = "done"  # it took effect: payments answered ok, or its lookup says done
    DECLINED = "declined"  # payments declined a call, and the lookup confirms it is absent
    UNKNOWN = "unknown"  # no definite answer: the money may or may not have moved


def payment_outcome(
    *, declined: bool, found: str | None, found_amount: int, amount: int
) -> PaymentOutcome:
    """The outcome of an owed operation of ``amount`` (currency units) whose call did not
    answer ok: ``declined`` whether payments answered that call with a definite decline
    (402 ``payment_declined``); ``found`` / ``found_amount`` what payments' lookup of the
    operation's idempotency key says (``done``, ``in_progress``, ``absent``; None when the
    lookup itself failed).

    - ``done`` with our amount → DONE (it landed; the answer was lost or late);
    - ``absent`` after a decline → DECLINED (payments works on one call per key at a
      time, so no earlier call of ours can still land);
    - anything else → UNKNOWN: no lookup, ``in_progress``, ``absent`` after a failure
      that was not a decline (an earlier call may still be on its way), or ``done`` with
      another amount (a contradiction for a person to look at, never settled by us).
    """
    if found == "done":
        return PaymentOutcome.DONE if found_amount == amount else PaymentOutcome.UNKNOWN
    if found == "absent" and declined:
        return PaymentOutcome.DECLINED
    return PaymentOutcome.UNKNOWN


@overload
def decide_settle(amount: int) -> SettleDecision: ...


@overload
def decide_settle(
    amount: int, outcome: PaymentOutcome, *, attempts: int, max_attempts: int
) -> SettleDecision | None: ...


def decide_settle(
    amount: int,
    outcome: PaymentOutcome = PaymentOutcome.DONE,
    *,
    attempts: int = 1,
    max_attempts: int = 1,
) -> SettleDecision | None:
    """Settle an owed charge of ``amount`` (currency units, ≥ 0) whose try number
    ``attempts`` (the worker's, ``payment_operations.attempts``) had ``outcome``; None
    when nothing is to be recorded yet: the charge stays owed and is retried with backoff.

    The rule (ADR 0002 "Worker"): **an ambiguous outcome never becomes debt.**

    - DONE: ``charged`` (``released`` for 0, a cancelled ride); the amount counts towards
      ``total_charged``.
    - DECLINED (payments definitely declined it, and its lookup by idempotency key found
      nothing landed or in flight; :func:`payment_outcome`) on try ``max_attempts``
      (``payments.max_attempts``) or later, of a positive amount: ``debt``, the amount
      becomes the rider's debt (DOMAIN.md "When rides go wrong"). An earlier decline is
      retried (the card may be topped up); 0 is never declined nor debt.
    - UNKNOWN (timeout, reset, 5xx, payments unreachable, a call still in progress,
      nothing found after a failure that was not a decline): None, however many tries
      it took. A charge that landed while every answer came late is found by the lookup
      and recorded ``charged``; one that payments never took stays owed until payments
      takes it or declines it.
    """
    if outcome is PaymentOutcome.DECLINED and amount > 0 and attempts >= max_attempts:
        return SettleDecision(
            payment_from=PaymentStatus.PENDING,
            payment_to=PaymentStatus.DEBT,
            operation_state=OperationState.GAVE_UP,
            total_charged_delta=0,
            debt_delta=amount,
        )
    if outcome is not PaymentOutcome.DONE:
        return None
    return SettleDecision(
        payment_from=PaymentStatus.PENDING,
        payment_to=PaymentStatus.RELEASED if amount == 0 else PaymentStatus.CHARGED,
        operation_state=OperationState.DONE,
        total_charged_delta=amount,
        debt_delta=0,
    )


def decide_settle_debt(amount: int) -> SettleDecision:
    """Settle a debt of ``amount`` (currency units, > 0) that support charged through
    payments (docs/operator-api.md): ``debt → charged``, the debt drops by the amount
    and ``total_charged`` grows by it; the gave-up charge operation is done at last.
    """
    return SettleDecision(
        payment_from=PaymentStatus.DEBT,
        payment_to=PaymentStatus.CHARGED,
        operation_state=OperationState.DONE,
        total_charged_delta=amount,
        debt_delta=-amount,
    )
