"""The offer token: round trip, expiry, tampering, key rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain import Offer, PricingInputs
from shared.errors import OfferExpired, OfferInvalid
from shared.ids import uuid7
from shared.offer_token import OfferSigner

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def offer() -> Offer:
    return Offer(
        id=uuid7(),
        user_id="user-1",
        scooter_id="scooter-1",
        zone_id="zone-1",
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
        inputs=PricingInputs(
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
        ),
    )


def test_round_trip() -> None:
    signer = OfferSigner("k" * 32)
    original = offer()
    assert signer.verify(signer.sign(original), NOW) == original


def test_expired() -> None:
    signer = OfferSigner("k" * 32)
    token = signer.sign(offer())
    with pytest.raises(OfferExpired):
        signer.verify(token, NOW + timedelta(minutes=5))


def test_altered_payload_is_refused() -> None:
    signer = OfferSigner("k" * 32)
    other = OfferSigner("k" * 32).sign(offer())
    head, _, mac = signer.sign(offer()).rpartition(".")
    forged = head.rsplit(".", 1)[0] + "." + other.split(".")[2] + "." + mac
    with pytest.raises(OfferInvalid):
        signer.verify(forged, NOW)


def test_other_key_is_refused_and_rotation_accepts_previous() -> None:
    old = OfferSigner("old" * 11)
    token = old.sign(offer())
    with pytest.raises(OfferInvalid):
        OfferSigner("new" * 11).verify(token, NOW)
    assert OfferSigner("new" * 11, previous_keys=("old" * 11,)).verify(token, NOW)


@pytest.mark.parametrize("token", ["", "v1", "v1.a.b.c", "v2.a.b.c", "v1...", "....."])
def test_garbage_is_invalid(token: str) -> None:
    with pytest.raises(OfferInvalid):
        OfferSigner("k" * 32).verify(token, NOW)
