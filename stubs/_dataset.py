"""The stubs' data set: scooters, tariff zones and users, computed from their number.

Each record comes from its own ``random.Random`` seeded with (seed, kind, number), so
start-up costs nothing, any record can be asked for in any order, and the same seed
always gives the same record. A few fixed records make DOMAIN.md's pricing vectors
reproducible by id.
"""

from __future__ import annotations

import random
import re

from shared.domain import ScooterData, TariffZone, UserProfile

# the zone of DOMAIN.md's vectors: 12 / 45 / 300
ZONE_1 = TariffZone(id="zone-1", price_per_minute=12, price_unlock=45, default_deposit=300)

FIXED_USERS: dict[int, UserProfile] = {
    1: UserProfile(id="user-1"),
    2: UserProfile(id="user-2", has_subscribtion=True),
    3: UserProfile(id="user-3", trusted=True),
    4: UserProfile(id="user-4", rides_count=40, total_debt=20_000, last_payment_status="ok"),
    5: UserProfile(
        id="user-5",
        rides_count=3,
        current_debt=1_000,
        total_debt=1_000,
        last_payment_status="failed",
    ),
    **{n: UserProfile(id=f"user-{n}") for n in range(6, 21)},
}
FIXED_SCOOTER_CHARGES = {1: 57, 2: 20}  # scooter-3..20 get a generated charge >= 28
FIXED_SCOOTERS_UP_TO = 20  # scooter-1..20 are all in zone-1

# "<kind>-<n>" with n written canonically, so "scooter-01" is not an alias of "scooter-1"
_RECORD_ID = re.compile(r"(scooter|zone|user)-([1-9][0-9]{0,11})")


class DataSet:
    """The records of one seed; ``None`` means "no such id" (the API answers 404)."""

    def __init__(self, *, seed: int, scooters: int, zones: int, users: int) -> None:
        if min(scooters, zones, users) < 1:
            raise ValueError("the stub data set needs at least one scooter, zone and user")
        self.seed = seed
        self.scooters = scooters
        self.zones = zones
        self.users = users

    def scooter(self, scooter_id: str) -> ScooterData | None:
        n = self._number(scooter_id, "scooter", self.scooters)
        if n is None:
            return None
        rng = self._rng("scooter", n)
        if n <= FIXED_SCOOTERS_UP_TO:
            charge = FIXED_SCOOTER_CHARGES.get(n) or rng.randint(28, 100)
            return ScooterData(id=scooter_id, zone_id=ZONE_1.id, charge=charge)
        # charge spans 0..100 so the low-charge discount (< 28) is hit often
        return ScooterData(
            id=scooter_id, zone_id=f"zone-{rng.randint(1, self.zones)}", charge=rng.randint(0, 100)
        )

    def zone(self, zone_id: str) -> TariffZone | None:
        n = self._number(zone_id, "zone", self.zones)
        if n is None:
            return None
        if n == 1:
            return ZONE_1
        rng = self._rng("zone", n)
        return TariffZone(
            id=zone_id,
            price_per_minute=rng.randint(5, 20),
            price_unlock=rng.randrange(0, 101, 5),
            default_deposit=rng.randrange(100, 1_001, 50),
        )

    def user(self, user_id: str) -> UserProfile | None:
        n = self._number(user_id, "user", self.users)
        if n is None:
            return None
        if n in FIXED_USERS:
            return FIXED_USERS[n]
        rng = self._rng("user", n)
        # ~5% owe money now; ~15% paid off debts before, half of those above 10,000
        current_debt = rng.randint(1, 50) * 100 if rng.random() < 0.05 else 0
        past_debt = rng.randint(1, 300) * 100 if rng.random() < 0.15 else 0
        total_debt = current_debt + past_debt
        # a debt needs a ride; trust is earned by many rides and a clean record
        rides_count = rng.randint(1, 500) if total_debt else rng.randint(0, 500)
        trusted = total_debt == 0 and rides_count >= 100 and rng.random() < 0.3
        if current_debt:
            last_payment_status: str | None = "failed"
        else:
            last_payment_status = "ok" if rides_count else None
        return UserProfile(
            id=user_id,
            has_subscribtion=rng.random() < 0.2,
            trusted=trusted,
            rides_count=rides_count,
            current_debt=current_debt,
            total_debt=total_debt,
            last_payment_status=last_payment_status,
        )

    def _rng(self, kind: str, n: int) -> random.Random:
        # a str seed is hashed with SHA-512: stable across processes and PYTHONHASHSEED
        return random.Random(f"{self.seed}:{kind}:{n}")

    @staticmethod
    def _number(record_id: str, kind: str, count: int) -> int | None:
        match = _RECORD_ID.fullmatch(record_id)
        if match is None or match[1] != kind:
            return None
        n = int(match[2])
        return n if n <= count else None
