"""Pricing rules of DOMAIN.md ("Pricing"), in one place, free of I/O.

What a finished ride costs is a rule of the order lifecycle: ``shared.lifecycle.ride_cost``.

Every step truncates toward zero exactly as the rules say; money stays ``int``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from shared import lifecycle
from shared.domain import PriceCoeffSettings, ScooterData, TariffZone, TrackPoint, UserProfile


class Price(msgspec.Struct, frozen=True, kw_only=True):
    price_per_minute: int
    price_unlock: int
    deposit: int


def quote(
    scooter: ScooterData,
    zone: TariffZone,
    user: UserProfile,
    coeffs: PriceCoeffSettings,
    *,
    unknown_user: bool = False,
) -> Price:
    """The personal price of a ride (DOMAIN.md "Pricing", money in currency units).

    Refuses a user who has a current debt (rule 4, :func:`shared.lifecycle.check_no_debt`):
    raises :class:`~shared.errors.UserHasDebt`.

    ``unknown_user``: the users service is down and this rider was never seen, so
    ``user`` is a blank profile. Priced conservatively (DOMAIN.md "When a dependency
    fails"): no subscription, not trusted, and the raised deposit
    (``default_deposit * deposit_multiplier``) as if the rider had a large total debt.
    """
    lifecycle.check_no_debt(user.id, user.current_debt)
    per_minute = int(zone.price_per_minute * coeffs.surge)
    if scooter.charge < coeffs.low_charge_threshold:
        per_minute = int(per_minute * coeffs.low_charge_discount)
    unlock = 0 if user.has_subscribtion else zone.price_unlock
    if user.trusted:
        deposit = 0
    elif unknown_user or user.total_debt > coeffs.deposit_debt_threshold:
        deposit = int(zone.default_deposit * coeffs.deposit_multiplier)
    else:
        deposit = zone.default_deposit
    return Price(price_per_minute=per_minute, price_unlock=unlock, deposit=deposit)


_EARTH_RADIUS_M = 6_371_008.8


def segment_meters(a: TrackPoint, b: TrackPoint) -> float:
    """Great-circle distance between two fixes (haversine), in metres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def track_distance_meters(track: Sequence[TrackPoint], max_speed_kmh: float | None = None) -> int:
    """Length of the GPS track (haversine between consecutive points), in whole metres.

    With ``max_speed_kmh`` (setting ``rides.track_max_speed_kmh``), a segment that implies a
    faster speed is a GPS glitch and adds nothing (DOMAIN.md, "When rides go wrong");
    so does a segment that moves without time passing (its ``t`` not after the last).
    The result is at most half the Earth's circumference per point, well inside 64 bits.

    Each segment is :func:`segment_meters` with the same floating-point operations in the
    same order (so the same result to the bit), inlined, and each point's radians and
    cosine computed once, not once per segment it ends and once per segment it starts:
    a finish's 10 KB track costs half the CPU (issue 13).
    """
    max_mps = None if max_speed_kmh is None else max_speed_kmh / 3.6
    total = 0.0
    points = iter(track)
    first = next(points, None)
    if first is None:
        return 0
    radians, sin, cos, asin, sqrt = math.radians, math.sin, math.cos, math.asin, math.sqrt
    diameter = 2 * _EARTH_RADIUS_M
    lat1, lon1, t1 = radians(first.lat), first.lon, first.t
    cos1 = cos(lat1)
    for b in points:
        lat2, lon2, t2 = radians(b.lat), b.lon, b.t
        cos2 = cos(lat2)
        h = sin((lat2 - lat1) / 2) ** 2 + cos1 * cos2 * sin(radians(lon2 - lon1) / 2) ** 2
        root = sqrt(h)
        meters = diameter * asin(root if root < 1.0 else 1.0)  # min(1.0, root), NaN too
        # impossible speed (or no time at all): adds nothing
        if max_mps is None or not (meters > 0 and meters > max_mps * (t2 - t1)):
            total += meters
        lat1, lon1, t1, cos1 = lat2, lon2, t2, cos2
    return int(total)
