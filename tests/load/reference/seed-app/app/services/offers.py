# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""Creating an offer: the scooter, the rider and the configs, the zone's tariff, a price."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException

from app.api.schemas import (
    OfferPayload,
    OfferResponse,
    PriceCoeffSettings,
    ScooterData,
    TariffZone,
    UserProfile,
)
from app.clients.external import ExternalClient
from app.settings import settings
from app.utils.signing import sign_offer


def price(
    scooter: ScooterData, zone: TariffZone, user: UserProfile, coeffs: PriceCoeffSettings
) -> tuple[int, int, int]:
    """(per minute, unlock, deposit) by the seed's rules (DOMAIN.md "Pricing")."""
    per_minute = int(zone.price_per_minute * coeffs.surge)
    if scooter.charge < coeffs.low_charge_threshold:
        per_minute = int(per_minute * coeffs.low_charge_discount)
    unlock = 0 if user.has_subscribtion else zone.price_unlock
    if user.trusted:
        deposit = 0
    elif user.total_debt > coeffs.deposit_debt_threshold:
        deposit = int(zone.default_deposit * coeffs.deposit_multiplier)
    else:
        deposit = zone.default_deposit
    return per_minute, unlock, deposit


async def create_offer(client: ExternalClient, user_id: str, scooter_id: str) -> OfferResponse:
    scooter, user, coeffs = await asyncio.gather(
        client.get_scooter(scooter_id), client.get_user(user_id), client.get_configs()
    )
    if user.current_debt > 0:
        raise HTTPException(409, "the rider owes money")
    zone = await client.get_zone(scooter.zone_id)
    per_minute, unlock, deposit = price(scooter, zone, user, coeffs)
    now = datetime.now(UTC)
    offer = OfferPayload(
        id=str(uuid.uuid4()),
        user_id=user_id,
        scooter_id=scooter_id,
        zone_id=scooter.zone_id,
        price_per_minute=per_minute,
        price_unlock=unlock,
        deposit=deposit,
        free_ride_seconds=coeffs.free_ride_seconds,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.offer_ttl_seconds),
    )
    return OfferResponse(**offer.model_dump(exclude={"free_ride_seconds"}), token=sign_offer(offer))
