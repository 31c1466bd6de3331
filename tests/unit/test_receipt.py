"""The receipt: its lines add up to the amount charged, for every ride (DOMAIN.md)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain import PriceCoeffSettings, PricingInputs, ScooterData, TariffZone, UserProfile
from shared.lifecycle import ride_charge, ride_cost
from shared.pricing import quote
from shared.receipt import (
    NotEnded,
    ReceiptLine,
    Refund,
    build_receipt,
    deposit_released,
    receipt_inputs,
    receipt_of,
)
from shared.ride_rules import capped_cost


@dataclass(frozen=True)
class Ride:
    status: str
    payment_status: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    free_ride_seconds: int
    duration_seconds: int | None
    total_amount: int | None


def inputs(**overrides: object) -> PricingInputs:
    values: dict[str, object] = {
        "charge": 57,
        "zone_price_per_minute": 12,
        "zone_price_unlock": 45,
        "zone_default_deposit": 300,
        "surge": 2.0,
        "low_charge_discount": 0.75,
        "has_subscription": False,
        "trusted": False,
        "total_debt": 0,
        "free_ride_seconds": 5,
        "zone_source": "live",
        "user_source": "live",
        "configs_source": "live",
    }
    values.update(overrides)
    return PricingInputs(**values)  # type: ignore[arg-type]


def amounts(receipt_lines: list[ReceiptLine]) -> dict[str, int]:
    return {line.kind: line.amount for line in receipt_lines}


def test_domain_vector_eight_seconds_at_24_per_minute() -> None:
    # DOMAIN.md: 8 s at 24/min + 45 → 48 (zone 12/min, surge 2)
    ride = Ride("finished", "charged", 24, 45, 300, 5, 8, 48)
    receipt = build_receipt(ride, inputs())
    assert amounts(receipt.lines) == {"riding_time": 1, "surge": 2, "unlock": 45}
    assert sum(line.amount for line in receipt.lines) == receipt.total == 48
    assert receipt.deposit_held == 300
    assert receipt.deposit_released == 252
    assert receipt.payment_status == "charged"


def test_low_charge_discount_is_a_negative_line() -> None:
    # charge 20 → 24/min x 0.75 = 18/min; 600 s: 120 at zone, +120 surge, -60 discount
    ride = Ride("finished", "charged", 18, 45, 300, 5, 600, 600 * 18 // 60 + 45)
    receipt = build_receipt(ride, inputs(charge=20))
    assert amounts(receipt.lines) == {
        "riding_time": 120,
        "surge": 120,
        "low_charge_discount": -60,
        "unlock": 45,
    }
    assert receipt.total == 225


def test_cancelled_ride_is_one_zero_line_and_releases_the_deposit() -> None:
    ride = Ride("cancelled", "released", 24, 45, 300, 5, 3, 0)
    receipt = build_receipt(ride, inputs())
    assert [(line.kind, line.amount) for line in receipt.lines] == [("cancellation", 0)]
    assert receipt.total == 0
    assert receipt.deposit_released == 300


def test_refunds_are_negative_lines_and_lower_the_total() -> None:
    ride = Ride("finished", "charged", 24, 45, 300, 5, 600, 285)
    receipt = build_receipt(ride, inputs(), [Refund(amount=100, reason="bumpy ride")])
    assert receipt.lines[-1].kind == "refund"
    assert receipt.lines[-1].amount == -100
    assert receipt.charged == 285
    assert receipt.refunded == 100
    assert receipt.total == 185 == sum(line.amount for line in receipt.lines)


def test_a_capped_charge_shows_the_cap_as_a_line() -> None:
    ride = Ride("finished", "charged", 24, 45, 5000, 5, 86_400, 3000)
    receipt = build_receipt(ride, inputs())
    assert receipt.lines[-1].kind == "cost_cap"
    assert receipt.total == 3000 == sum(line.amount for line in receipt.lines)


def test_subscription_unlock_says_it_was_included() -> None:
    ride = Ride("finished", "charged", 24, 0, 300, 5, 60, 24)
    receipt = build_receipt(ride, inputs(has_subscription=True))
    unlock = next(line for line in receipt.lines if line.kind == "unlock")
    assert unlock.amount == 0
    assert "subscription" in unlock.description


@pytest.mark.parametrize("status", ["active", "starting", "rejected"])
def test_no_receipt_before_the_ride_ends(status: str) -> None:
    with pytest.raises(NotEnded):
        build_receipt(Ride(status, "held", 24, 45, 300, 5, None, None), inputs())


@pytest.mark.parametrize(
    ("status", "released_after_debt", "expected"),
    [
        ("charged", False, 200),
        ("released", False, 300),
        ("pending", False, 0),
        ("held", False, 0),
        ("debt", False, 0),
        ("debt", True, 300),
    ],
)
def test_deposit_released_by_payment_status(
    status: str, released_after_debt: bool, expected: int
) -> None:
    assert deposit_released(status, 300, 100, released_after_debt) == expected


def test_a_charge_above_the_deposit_releases_nothing() -> None:
    assert deposit_released("charged", 300, 450) == 0


@settings(max_examples=2_000, deadline=None)
@given(
    zone_rate=st.integers(0, 10_000),
    zone_unlock=st.integers(0, 10_000),
    zone_deposit=st.integers(0, 100_000),
    surge=st.floats(0.01, 20, allow_nan=False, allow_infinity=False),
    discount=st.floats(0.01, 1, allow_nan=False, allow_infinity=False),
    charge=st.integers(0, 100),
    threshold=st.integers(0, 100),
    subscription=st.booleans(),
    trusted=st.booleans(),
    seconds=st.integers(0, 7 * 86_400),
    free_seconds=st.integers(0, 60),
    cap=st.none() | st.integers(0, 1_000_000),
    refund_parts=st.lists(st.integers(1, 1_000), max_size=4),
    settled=st.sampled_from(["charged", "pending", "debt"]),
    hold_released_after_debt=st.booleans(),
)
def test_lines_always_add_up_to_the_amount_charged(
    zone_rate: int,
    zone_unlock: int,
    zone_deposit: int,
    surge: float,
    discount: float,
    charge: int,
    threshold: int,
    subscription: bool,
    trusted: bool,
    seconds: int,
    free_seconds: int,
    cap: int | None,
    refund_parts: list[int],
    settled: str,
    hold_released_after_debt: bool,
) -> None:
    """Priced and charged exactly as the command side does, over many random rides,
    with refunds (never more than the charge, as the refund command refuses), a debt
    whose hold was released and then maybe settled; the receipt built as both sides
    build it, from the inputs stored with the order (``receipt_inputs``)."""
    coeffs = PriceCoeffSettings(
        surge=surge,
        low_charge_discount=discount,
        low_charge_threshold=threshold,
        free_ride_seconds=free_seconds,
    )
    price = quote(
        ScooterData(id="s", zone_id="z", charge=charge),
        TariffZone(
            id="z",
            price_per_minute=zone_rate,
            price_unlock=zone_unlock,
            default_deposit=zone_deposit,
        ),
        UserProfile(id="u", has_subscribtion=subscription, trusted=trusted),
        coeffs,
    )
    cost = ride_cost(seconds, price.price_per_minute, price.price_unlock, free_seconds)
    charged = ride_charge(
        seconds, price.price_per_minute, price.price_unlock, free_seconds, max_cost=cap or 0
    )
    assert charged == capped_cost(cost, cap)
    cancelled = seconds < free_seconds
    # refunds never exceed what was charged (the refund command refuses more)
    refunds, left = [], charged
    for part in refund_parts:
        if part <= left:
            refunds.append(Refund(amount=part, reason="r"))
            left -= part
    ride = Ride(
        status="cancelled" if cancelled else "finished",
        payment_status="released" if cancelled else settled,
        price_per_minute=price.price_per_minute,
        price_unlock=price.price_unlock,
        deposit=price.deposit,
        free_ride_seconds=free_seconds,
        duration_seconds=seconds,
        total_amount=charged,
    )
    pricing = inputs(
        charge=charge,
        zone_price_per_minute=zone_rate,
        zone_price_unlock=zone_unlock,
        zone_default_deposit=zone_deposit,
        surge=surge,
        low_charge_discount=discount,
        has_subscription=subscription,
        trusted=trusted,
        free_ride_seconds=free_seconds,
    )
    released = hold_released_after_debt and settled != "pending" and not cancelled
    stored = receipt_inputs(
        msgspec.json.encode(pricing).decode(),
        msgspec.json.encode([{"amount": r.amount, "reason": r.reason} for r in refunds]).decode(),
        released,
    )
    receipt = receipt_of(ride, stored)
    assert receipt is not None
    assert receipt == build_receipt(ride, pricing, refunds, hold_released_after_debt=released)

    assert sum(line.amount for line in receipt.lines) == receipt.total
    assert receipt.total == charged - sum(r.amount for r in refunds)
    assert receipt.charged == charged
    assert all(isinstance(line.amount, int) for line in receipt.lines)
    kinds = [line.kind for line in receipt.lines]
    assert ("cost_cap" in kinds) == (charged < cost)
    assert "adjustment" not in kinds  # only a bookkeeping error would need one
    assert kinds.count("refund") == len(refunds)
    assert 0 <= receipt.deposit_released <= receipt.deposit_held == price.deposit
    assert receipt.refunded == sum(r.amount for r in refunds) <= receipt.charged
    if released:  # a debt's hold released: all of the deposit, settled later or not
        assert receipt.deposit_released == price.deposit
    if not cancelled:
        line = {line.kind: line.amount for line in receipt.lines}
        assert line["riding_time"] == seconds * zone_rate // 60
        assert line["unlock"] == price.price_unlock
        if "surge" in line or "low_charge_discount" in line:
            assert (
                line["riding_time"] + line.get("surge", 0) + line.get("low_charge_discount", 0)
                == seconds * price.price_per_minute // 60
            )
