"""The offer token: round trip, expiry, tampering, key rotation."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from shared.domain import Offer
from shared.errors import OfferExpired, OfferInvalid
from shared.ids import uuid7
from shared.offer_token import OfferSigner, key_id
from tests.vectors import DOMAIN_PRICING

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
        inputs=DOMAIN_PRICING,
    )


K = b"k" * 32


def test_round_trip() -> None:
    signer = OfferSigner([K])
    original = offer()
    assert signer.verify(signer.sign(original), NOW) == original


def test_expired() -> None:
    signer = OfferSigner([K])
    token = signer.sign(offer())
    with pytest.raises(OfferExpired):
        signer.verify(token, NOW + timedelta(minutes=5))


def test_altered_payload_is_refused() -> None:
    signer = OfferSigner([K])
    version, kid, sealed = signer.sign(offer()).split(".")
    other = OfferSigner([K]).sign(offer()).split(".")[2]
    # another token's ciphertext under this token's nonce and tag
    forged = f"{version}.{kid}.{sealed[:16]}{other[16:-22]}{sealed[-22:]}"
    with pytest.raises(OfferInvalid):
        signer.verify(forged, NOW)


def test_other_key_is_refused_and_rotation_accepts_previous() -> None:
    old, new = b"o" * 32, b"n" * 32
    token = OfferSigner([old]).sign(offer())
    with pytest.raises(OfferInvalid):
        OfferSigner([new]).verify(token, NOW)
    rotated = OfferSigner([new, old])
    assert rotated.verify(token, NOW)
    assert rotated.sign(offer()).split(".")[1] == key_id(new)  # sealed with the newest


@pytest.mark.parametrize(
    "token", ["", "v1", "v1.a.b.c", "v2.a.b.c", "v2.a.b", "v1...", ".....", "v2..", "v2.x.!!"]
)
def test_garbage_is_invalid(token: str) -> None:
    with pytest.raises(OfferInvalid):
        OfferSigner([K]).verify(token, NOW)


def test_the_token_reveals_nothing_about_the_rider() -> None:
    """The pricing inputs (trusted, subscription, debt) are encrypted, not just signed."""
    token = OfferSigner([K]).sign(offer())
    sealed = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    for secret in (b"trusted", b"has_subscription", b"total_debt", b"user-1", b"scooter-1"):
        assert secret not in sealed
    # random bytes: not msgpack (msgspec may also fail on a bad UTF-8 string, a ValueError)
    with pytest.raises((msgspec.DecodeError, ValueError)):
        msgspec.msgpack.decode(sealed[12:])


def test_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        OfferSigner([b"short"])
    with pytest.raises(ValueError, match="at least one"):
        OfferSigner([])
