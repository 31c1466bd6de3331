"""The DOMAIN.md pricing vector as the tests' one copy of it.

DOMAIN.md's worked example: zone-1 (12 per minute, 45 to unlock, 300 deposit), surge 2.0,
a scooter at 57 % charge (low-charge discount 0.75), a rider without subscription or
trust and without debt, 5 free seconds; every source answered live.
"""

from __future__ import annotations

from shared.domain import PricingInputs

DOMAIN_PRICING = PricingInputs(
    charge=57,
    zone_price_per_minute=12,
    zone_price_unlock=45,
    zone_default_deposit=300,
    surge=2.0,
    low_charge_discount=0.75,
    has_subscription=False,
    trusted=False,
    total_debt=0,
    free_ride_seconds=5,
    zone_source="live",
    user_source="live",
    configs_source="live",
)
