"""DOMAIN.md pricing rules and vectors, on the pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from shared.domain import PriceCoeffSettings, ScooterData, TariffZone, TrackPoint, UserProfile
from shared.errors import UserHasDebt
from shared.lifecycle import ride_cost
from shared.pricing import quote, track_distance_meters

ZONE = TariffZone(id="zone-1", price_per_minute=12, price_unlock=45, default_deposit=300)
COEFFS = PriceCoeffSettings(surge=2, low_charge_discount=0.75)


def price(charge: int = 57, **user: Any) -> tuple[int, int, int]:
    p = quote(
        ScooterData(id="s", zone_id="zone-1", charge=charge),
        ZONE,
        UserProfile(id="u", **user),
        COEFFS,
    )
    return p.price_per_minute, p.price_unlock, p.deposit


def test_vectors() -> None:
    assert price() == (24, 45, 300)
    assert price(charge=20)[0] == 18
    assert price(has_subscribtion=True)[1] == 0
    assert price(trusted=True)[2] == 0
    assert price(total_debt=20_000)[2] == 375


def test_current_debt_is_refused() -> None:
    with pytest.raises(UserHasDebt):
        price(current_debt=1_000)


def test_threshold_edges() -> None:
    assert price(charge=28)[0] == 24  # not below the threshold
    assert price(charge=27)[0] == 18
    assert price(total_debt=10_000)[2] == 300  # not above the debt threshold
    assert price(total_debt=10_001)[2] == 375
    assert price(trusted=True, total_debt=20_000)[2] == 0


def test_each_step_truncates() -> None:
    zone = TariffZone(id="z", price_per_minute=7, price_unlock=0, default_deposit=333)
    coeffs = PriceCoeffSettings(surge=1.5, low_charge_discount=0.75, deposit_multiplier=1.25)
    p = quote(
        ScooterData(id="s", zone_id="z", charge=5),
        zone,
        UserProfile(id="u", total_debt=50_000),
        coeffs,
    )
    assert p.price_per_minute == int(int(7 * 1.5) * 0.75) == 7
    assert p.deposit == int(333 * 1.25) == 416


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, 0), (4, 0), (5, 5 * 24 // 60 + 45), (8, 48), (59, 59 * 24 // 60 + 45), (3600, 1485)],
)
def test_ride_cost(seconds: int, expected: int) -> None:
    assert ride_cost(seconds, 24, 45, free_ride_seconds=5) == expected


def test_distance() -> None:
    assert track_distance_meters([]) == 0
    assert track_distance_meters([TrackPoint(t=0, lat=0, lon=0)]) == 0
    # one degree of latitude is about 111.2 km
    one_degree = [TrackPoint(t=0, lat=0, lon=0), TrackPoint(t=1, lat=1, lon=0)]
    assert track_distance_meters(one_degree) == pytest.approx(111_195, rel=1e-3)
