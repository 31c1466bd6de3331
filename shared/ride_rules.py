"""Rules for rides gone wrong (DOMAIN.md, "When rides go wrong"; docs/rides-gone-wrong.md). No I/O.

- An **abandoned ride**: active longer than ``abandoned_ride_seconds``. The system ends
  it *as of* ``started_at + abandoned_ride_seconds``, so what it costs does not depend
  on when the worker noticed, and a crashed app can never run up a bill for days.
- The **ride cost cap**: what one ride can cost (unlock included), ``max_ride_cost``
  currency units; 0 means no cap. Applied to every charge, whoever ends the ride.
- An **operator end**: support ends a ride on the rider's behalf at a given time (e.g.
  when the scooter was last seen parked), charged by the normal formula up to then.
- A **refund**: all or part of what was charged, never more in total.

Times are timezone-aware UTC; money is int currency units; durations whole seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.errors import EndBeforeStart, EndInFuture, InvalidRefund, RefundExceedsCharge


def capped_cost(cost: int, max_ride_cost: int | None) -> int:
    """``cost`` lowered to the cap; ``max_ride_cost`` None or 0 means no cap."""
    if not max_ride_cost:
        return cost
    return min(cost, max_ride_cost)


def abandoned_cutoff(now: datetime, abandoned_ride_seconds: int) -> datetime:
    """Rides started before this moment and still active are abandoned."""
    return now - timedelta(seconds=abandoned_ride_seconds)


def is_abandoned(started_at: datetime, now: datetime, abandoned_ride_seconds: int) -> bool:
    """Whether an active ride started at ``started_at`` counts as abandoned at ``now``."""
    return started_at < abandoned_cutoff(now, abandoned_ride_seconds)


def abandoned_end(started_at: datetime, abandoned_ride_seconds: int) -> datetime:
    """When the system ends an abandoned ride: ``abandoned_ride_seconds`` after its start."""
    return started_at + timedelta(seconds=abandoned_ride_seconds)


def operator_end(started_at: datetime, ended_at: datetime, now: datetime) -> int:
    """The charged duration, in whole seconds, of a ride support ends at ``ended_at``.

    Raises :class:`EndBeforeStart` when ``ended_at`` is before the start and
    :class:`EndInFuture` when it is after ``now`` (a ride cannot be ended ahead of time).
    """
    if ended_at < started_at:
        raise EndBeforeStart(f"the ride started at {started_at.isoformat()}, after {ended_at}")
    if ended_at > now:
        raise EndInFuture(f"{ended_at.isoformat()} is in the future")
    return int((ended_at - started_at).total_seconds())


def check_refund(charged: int, refunded: int, amount: int) -> None:
    """Refuse a refund of ``amount`` on an order ``charged`` that already ``refunded``.

    Raises :class:`InvalidRefund` for a non-positive amount and
    :class:`RefundExceedsCharge` when the refunds would add up to more than the charge.
    """
    if amount <= 0:
        raise InvalidRefund(f"a refund must be positive, got {amount}")
    if refunded + amount > charged:
        raise RefundExceedsCharge(
            f"{charged} was charged and {refunded} refunded: at most {charged - refunded} is left"
        )
