"""The itemised receipt of a ride, built from the stored order and its pricing inputs. No I/O.

DOMAIN.md, "When rides go wrong": the receipt itemises unlock, riding time at the rate,
what surge and discounts did, refunds, deposit held and released; its lines add up to
the charge. Pricing truncates at every step (DOMAIN.md, "Pricing"), so the receipt does
not multiply rates by seconds on its own: each effect is the *difference* between the
riding cost at two consecutive rates, and those differences telescope to the riding
cost the ride was actually charged::

    riding_time          seconds x zone rate // 60
    surge                seconds x surged rate // 60      - riding_time
    low_charge_discount  seconds x ride's rate // 60      - seconds x surged rate // 60
    unlock               the ride's unlock price
    cost_cap             charged - (the sum above), when a cap lowered the charge
    refund               - each refunded amount

so ``sum(line.amount) == total`` holds exactly, for every ride, whatever truncation did.
Money is int currency units; durations are whole seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from shared.domain import PricingInputs

LineKind = Literal[
    "unlock",
    "riding_time",
    "surge",
    "low_charge_discount",
    "cancellation",
    "cost_cap",
    "adjustment",
    "refund",
]


class ReceiptLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line: ``amount`` in currency units, negative for refunds and discounts."""

    kind: LineKind
    description: str
    amount: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """The receipt of a finished or cancelled order (fixed shape, issue 12).

    ``total`` is what the rider pays for the ride net of refunds: always the sum of
    ``lines``. ``charged`` is the amount charged through payments before refunds.
    ``deposit_held`` was reserved at start; ``deposit_released`` is the part of it
    given back (the charge is taken from the hold, the rest is released).
    """

    lines: list[ReceiptLine]
    total: int
    charged: int
    refunded: int
    deposit_held: int
    deposit_released: int
    payment_status: str


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    """A refund given on an order: a positive ``amount`` and the operator's reason."""

    amount: int
    reason: str


class EndedRide(Protocol):
    """What the receipt reads from a stored order (``OrderSnapshot`` and views qualify)."""

    @property
    def status(self) -> str: ...
    @property
    def payment_status(self) -> str: ...
    @property
    def price_per_minute(self) -> int: ...
    @property
    def price_unlock(self) -> int: ...
    @property
    def deposit(self) -> int: ...
    @property
    def free_ride_seconds(self) -> int: ...
    @property
    def duration_seconds(self) -> int | None: ...
    @property
    def total_amount(self) -> int | None: ...


class NotEnded(ValueError):
    """The order has no final amount yet (still active, or never started)."""


def riding_cost(seconds: int, price_per_minute: int) -> int:
    """``seconds x price_per_minute // 60``: DOMAIN.md's per-second proration, floored."""
    return seconds * price_per_minute // 60


def build_receipt(
    order: EndedRide,
    pricing: PricingInputs,
    refunds: Sequence[Refund] = (),
    *,
    hold_released_after_debt: bool = False,
) -> Receipt:
    """The itemised receipt of an ended order.

    ``order`` must be ``finished`` or ``cancelled`` with ``duration_seconds`` and
    ``total_amount`` set (raises :class:`NotEnded` otherwise). ``pricing`` is the
    offer's inputs stored with the order; ``refunds`` are the refunds given on it.
    ``hold_released_after_debt`` says whether the hold of a ride whose charge became
    debt was released (issue 12: it is, once the release succeeds).
    """
    if order.status not in ("finished", "cancelled"):
        raise NotEnded(f"an order in status {order.status!r} has no receipt yet")
    if order.duration_seconds is None or order.total_amount is None:
        raise NotEnded("the order has no duration or amount")
    seconds, charged = order.duration_seconds, order.total_amount
    lines: list[ReceiptLine] = []
    if order.status == "cancelled":
        lines.append(
            ReceiptLine(
                kind="cancellation",
                description=(f"Cancelled: {seconds} s, under the free {order.free_ride_seconds} s"),
                amount=0,
            )
        )
    else:
        lines.extend(_ride_lines(order, pricing, seconds))
    itemised = sum(line.amount for line in lines)
    if itemised != charged:
        # a cost cap lowered the charge; anything else would be a bookkeeping error,
        # shown rather than hidden so that the lines still add up
        lines.append(
            ReceiptLine(
                kind="cost_cap" if charged < itemised else "adjustment",
                description=(
                    f"Ride cost capped at {charged}"
                    if charged < itemised
                    else "Adjustment to the amount charged"
                ),
                amount=charged - itemised,
            )
        )
    refunded = 0
    for refund in refunds:
        refunded += refund.amount
        lines.append(
            ReceiptLine(
                kind="refund", description=f"Refund: {refund.reason}", amount=-refund.amount
            )
        )
    return Receipt(
        lines=lines,
        total=charged - refunded,
        charged=charged,
        refunded=refunded,
        deposit_held=order.deposit,
        deposit_released=deposit_released(
            order.payment_status, order.deposit, charged, hold_released_after_debt
        ),
        payment_status=order.payment_status,
    )


def _ride_lines(order: EndedRide, pricing: PricingInputs, seconds: int) -> list[ReceiptLine]:
    zone_rate = pricing.zone_price_per_minute
    surged_rate = int(zone_rate * pricing.surge)  # DOMAIN.md "Pricing" step 1, truncated
    rate = order.price_per_minute  # what the ride was priced at, after every step
    at_zone = riding_cost(seconds, zone_rate)
    at_surge = riding_cost(seconds, surged_rate)
    at_rate = riding_cost(seconds, rate)
    lines = [
        ReceiptLine(
            kind="riding_time",
            description=f"Riding time: {seconds} s at {zone_rate}/min",
            amount=at_zone,
        )
    ]
    if surged_rate != zone_rate:
        lines.append(
            ReceiptLine(
                kind="surge",
                description=f"Surge x{pricing.surge:g}: {zone_rate}/min → {surged_rate}/min",
                amount=at_surge - at_zone,
            )
        )
    if rate != surged_rate:
        lines.append(
            ReceiptLine(
                kind="low_charge_discount",
                description=(
                    f"Low-charge discount x{pricing.low_charge_discount:g} "
                    f"(battery {pricing.charge} %): {surged_rate}/min → {rate}/min"
                ),
                amount=at_rate - at_surge,
            )
        )
    if order.price_unlock == 0 and pricing.has_subscription and pricing.zone_price_unlock > 0:
        unlock_text = f"Unlock: included in the subscription (else {pricing.zone_price_unlock})"
    else:
        unlock_text = "Unlock"
    lines.append(ReceiptLine(kind="unlock", description=unlock_text, amount=order.price_unlock))
    return lines


def deposit_released(
    payment_status: str, deposit: int, charged: int, hold_released_after_debt: bool = False
) -> int:
    """The part of the deposit hold given back, by payment status (ADR 0002).

    ``hold_released_after_debt``: the charge became debt and the worker released the
    whole hold (docs/operator-api.md), so all of it, whatever a later settlement
    charged separately. Else ``charged``: the charge was taken from the hold, the rest
    released. ``released`` (a cancelled ride): all of it. Debt, holding, held or
    pending: none yet.
    """
    if hold_released_after_debt:
        return deposit
    if payment_status == "charged":
        return max(0, deposit - charged)
    if payment_status == "released":
        return deposit
    return 0


class ReceiptInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What a receipt needs besides the order's own fields, as stored with it: the
    offer's ``pricing`` inputs (``orders.pricing``), the confirmed ``refunds`` in the
    order they were given, and whether the hold left behind by a debt was released."""

    pricing: PricingInputs
    refunds: list[Refund] = []
    hold_released_after_debt: bool = False


_inputs_decoder = msgspec.json.Decoder(PricingInputs)
_refunds_decoder = msgspec.json.Decoder(list[Refund])


def receipt_inputs(
    pricing: str, refunds: str, hold_released_after_debt: bool
) -> ReceiptInputs | None:
    """:class:`ReceiptInputs` from their stored JSON text (``orders.pricing`` and a JSON
    array of ``{"amount", "reason"}``); None when they are not of that shape (an order
    stored without its pricing inputs has no receipt rather than a broken screen)."""
    try:
        return ReceiptInputs(
            pricing=_inputs_decoder.decode(pricing),
            refunds=_refunds_decoder.decode(refunds),
            hold_released_after_debt=hold_released_after_debt,
        )
    except msgspec.DecodeError:  # ValidationError is one
        return None


def receipt_of(order: EndedRide, inputs: ReceiptInputs | None) -> Receipt | None:
    """The receipt of ``order`` if it has ended (finished or cancelled) and its inputs
    are known, else None."""
    if inputs is None:
        return None
    try:
        return build_receipt(
            order,
            inputs.pricing,
            inputs.refunds,
            hold_released_after_debt=inputs.hold_released_after_debt,
        )
    except NotEnded:
        return None
