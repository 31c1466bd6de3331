# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""Request and answer bodies, and the external services' DTOs (pydantic)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ScooterData(BaseModel):
    id: str
    zone_id: str
    charge: int


class TariffZone(BaseModel):
    id: str
    price_per_minute: int
    price_unlock: int
    default_deposit: int


class UserProfile(BaseModel):
    id: str
    has_subscribtion: bool = False
    trusted: bool = False
    rides_count: int = 0
    current_debt: int = 0
    total_debt: int = 0
    last_payment_status: str | None = None


class PriceCoeffSettings(BaseModel):
    surge: float = 1.0
    low_charge_discount: float = 1.0
    low_charge_threshold: int = 28
    deposit_multiplier: float = 1.25
    deposit_debt_threshold: int = 10_000
    free_ride_seconds: int = 5


class ConfigsAnswer(BaseModel):
    price_coeff_settings: PriceCoeffSettings


class CreateOfferRequest(BaseModel):
    scooter_id: str = Field(min_length=1, max_length=64)


class OfferPayload(BaseModel):
    """What an offer token carries (signed, so it needs no row)."""

    id: str
    user_id: str
    scooter_id: str
    zone_id: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    free_ride_seconds: int
    created_at: datetime
    expires_at: datetime


class OfferResponse(BaseModel):
    id: str
    user_id: str
    scooter_id: str
    zone_id: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    created_at: datetime
    expires_at: datetime
    token: str


class CreateOrderRequest(BaseModel):
    offer_token: str = Field(min_length=1, max_length=4096)


class TrackPoint(BaseModel):
    t: float = Field(ge=0)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class FinishOrderRequest(BaseModel):
    track: list[TrackPoint] = Field(default_factory=list, max_length=20_000)


class OrderResponse(BaseModel):
    id: str
    offer_id: str
    user_id: str
    scooter_id: str
    zone_id: str
    status: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    created_at: datetime
    finished_at: datetime | None = None
    duration_seconds: int | None = None
    total_amount: int | None = None
    distance_meters: int | None = None
