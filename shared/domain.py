"""Domain types: what the external services tell us, offers and orders.

Wire Structs keep the external services' field names (``has_subscribtion`` is
the contract's spelling). Money is always an ``int`` in currency units.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from shared.lifecycle import OrderStatus, PaymentStatus

MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last moment a datetime holds
MAX_AMOUNT = 2**63 - 1  # money, durations and distances are 64-bit from the wire to the database

# (?!\n): Python's "$" also matches before a final line break, so "user-1\n" would pass
ID_PATTERN = r"^[A-Za-z0-9_.:-]+(?!\n)$"
"""The alphabet of every id we take from outside (riders, scooters, zones, orders)."""
ID_MAX_LENGTH = 64

ExternalId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
]
"""An id in an external service's answer (a scooter's ``zone_id``, a profile's ``id``...):
1..64 of ``A-Z a-z 0-9 _ . : -``, like the ids the APIs accept. Anything else (a 1 MB
string, NUL, a line break) fails the answer's decoding, so that service counts as failing
and its degradation policy applies (``command_api/external.py``) before the value could
reach an offer, a token, a log line, Postgres or Redis."""

ExternalToken = Annotated[
    str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH, pattern=r"^[A-Za-z0-9_.-]+(?!\n)$")
]
"""A short status word in an external answer (``last_payment_status``): 1..64 of
``A-Z a-z 0-9 _ . -``."""

PaymentId = Annotated[str, msgspec.Meta(max_length=256, pattern=r"^[A-Za-z0-9_.:-]*(?!\n)$")]
"""An id in a payments call's body, as the payments stub takes it: up to 256 of
``A-Z a-z 0-9 _ . : -`` (NUL, line breaks and the like: 400; empty: the stub's 422)."""

RefundKey = Annotated[str, msgspec.Meta(pattern=r"^[ -~]*(?!\n)$")]
"""A refund's key (the operator's ``Idempotency-Key``): printable ASCII only; its length
(1..200) is the payments stub's check (422)."""

# --- external services' answers (wire contract) -------------------------------------------


class ScooterData(msgspec.Struct, frozen=True, kw_only=True):
    id: ExternalId
    zone_id: ExternalId
    charge: int


class TariffZone(msgspec.Struct, frozen=True, kw_only=True):
    id: ExternalId
    price_per_minute: int
    price_unlock: int
    default_deposit: int


class UserProfile(msgspec.Struct, frozen=True, kw_only=True):
    id: ExternalId
    has_subscribtion: bool = False
    trusted: bool = False
    rides_count: int = 0
    current_debt: int = 0
    total_debt: int = 0
    last_payment_status: ExternalToken | None = None


class PriceCoeffSettings(msgspec.Struct, frozen=True, kw_only=True):
    surge: float = 1.0
    low_charge_discount: float = 1.0
    low_charge_threshold: int = 28
    deposit_multiplier: float = 1.25
    deposit_debt_threshold: int = 10_000
    free_ride_seconds: int = 5


class ConfigsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    price_coeff_settings: PriceCoeffSettings


class PaymentRequest(msgspec.Struct, frozen=True, kw_only=True):
    user_id: PaymentId
    order_id: PaymentId
    amount: Annotated[int, msgspec.Meta(le=MAX_AMOUNT)]  # refused below 0 by the payments stub


class PaymentAnswer(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class PaymentOperationAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /payment-operation?id=&operation=[&refund_key=]`` (our payments contract):
    what became of one operation, found by its idempotency key (order, operation, and a
    refund's refund key). ``state``: ``done`` (it took effect; ``amount`` in currency
    units), ``in_progress`` (a call with that key is being worked on and may still land)
    or ``absent`` (it never took effect: not asked, failed, or declined)."""

    order_id: ExternalId
    operation: Literal["hold", "charge", "release", "refund"]
    state: Literal["done", "in_progress", "absent"]
    amount: Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)] = 0


class RefundRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /refund-money-for-order`` (our payments contract): give back ``amount`` of
    what the order was charged; idempotent per ``(order_id, refund_key)``."""

    user_id: PaymentId
    order_id: PaymentId
    amount: int
    refund_key: RefundKey


# --- offers -----------------------------------------------------------------------------------


class PricingInputs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """What an offer was priced from, kept with it for audit and disputes."""

    charge: int
    zone_price_per_minute: int
    zone_price_unlock: int
    zone_default_deposit: int
    surge: float
    low_charge_discount: float
    has_subscription: bool
    trusted: bool
    total_debt: int
    free_ride_seconds: int
    zone_source: str  # "live" | "cache" | "base_tariff"
    user_source: str  # "live" | "last_known" | "conservative"
    configs_source: str  # "live" | "last_good" | "defaults"


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    user_id: str
    scooter_id: str
    zone_id: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    created_at: datetime
    expires_at: datetime
    inputs: PricingInputs


# --- orders -----------------------------------------------------------------------------------


class OrderFields(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of an order a rider may see, written once: the stored :class:`Order`,
    the read side's ``OrderView`` and the ``OrderScreen`` all extend this Struct.

    Money (``price_per_minute``, ``price_unlock``, ``deposit``, ``total_amount``) in
    currency units, durations in whole seconds, distances in whole metres, times UTC;
    all 64-bit in Postgres (``bigint``). Statuses: :mod:`shared.lifecycle`.
    ``tests/integration/test_order_shape.py`` fails when the ``orders`` table or the SQL
    type ``order_snapshot`` disagree with these Structs.
    """

    id: str
    user_id: str
    scooter_id: str
    zone_id: str
    status: OrderStatus
    payment_status: PaymentStatus
    price_per_minute: int
    price_unlock: int
    deposit: int
    created_at: datetime
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: int | None = None
    total_amount: int | None = None  # the amount charged (0 for a cancelled ride)
    distance_meters: int | None = None
    version: int


class Order(OrderFields, frozen=True, kw_only=True):
    """The stored order (one row of ``orders`` without its track and pricing inputs) at
    ``version``; what the ride steps return and what every outbox event carries (its
    *snapshot*, SQL type ``order_snapshot``). Terms: ``docs/glossary.md``."""

    offer_id: str
    free_ride_seconds: int


class NewOrder(Order, frozen=True, kw_only=True):
    """An order as the start step writes it: the stored order plus the offer's pricing
    inputs (``orders.pricing``). Passed to SQL as one jsonb value (``start_ride``)."""

    pricing: PricingInputs


class TrackPoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One GPS fix of a ride."""

    t: Annotated[float, msgspec.Meta(ge=0, le=MAX_EPOCH_SECONDS)]  # seconds since the epoch
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]
