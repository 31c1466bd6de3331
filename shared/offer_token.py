"""The offer token: the whole offer, sealed, so offers need no database write.

Format: ``v2.<kid>.<sealed>`` where ``sealed`` is, in unpadded base64url, a 12-byte
random nonce followed by AES-256-GCM(key, nonce, msgpack(:class:`~shared.domain.Offer`),
associated data ``v2.<kid>``). The authenticated cipher (``cryptography``'s AESGCM)
both refuses any altered token and hides the offer from its holder: the app learns
prices from the offer answer, never the rider's pricing inputs (trusted, subscription,
debt) from the token (ADR 0001, ADR 0006).

The key id lets keys rotate: tokens are sealed with the newest key and opened with
any key of the ring. Single use is enforced at redemption by the ``offer_redemptions``
table, not by the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from datetime import datetime

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.domain import Offer
from shared.errors import OfferExpired, OfferInvalid
from shared.settings import OFFER_KEY_BYTES

_VERSION = "v2"
_NONCE_BYTES = 12
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Offer)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: bytes) -> str:
    """A short public name for an offer key (first bytes of its SHA-256)."""
    return _b64(hashlib.sha256(key).digest()[:6])


def new_offer_key() -> bytes:
    """A fresh random offer key (32 bytes, for AES-256-GCM)."""
    return AESGCM.generate_key(bit_length=OFFER_KEY_BYTES * 8)


def encode_offer_key(key: bytes) -> str:
    """``key`` as it is written in ``SCOOTERS_OFFER_KEYS`` (base64url, no padding)."""
    return _b64(key)


class OfferSigner:
    """Seals offers with the newest key; opens tokens sealed with any key of the ring.

    ``keys`` are 32-byte AES keys, newest first (at least one). Raises ValueError on a
    key of the wrong size.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("an offer signer needs at least one key")
        for key in keys:
            if len(key) != OFFER_KEY_BYTES:
                raise ValueError(f"offer keys are {OFFER_KEY_BYTES} bytes, got {len(key)}")
        self._kid = key_id(keys[0])
        self._aead = AESGCM(keys[0])
        self._ring: Mapping[str, AESGCM] = {key_id(k): AESGCM(k) for k in reversed(keys)}

    @property
    def kid(self) -> str:
        """The id of the key new tokens are sealed with."""
        return self._kid

    def sign(self, offer: Offer) -> str:
        """The token the app sends back to start a ride from ``offer`` (opaque to it)."""
        head = f"{_VERSION}.{self._kid}"
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, _encoder.encode(offer), head.encode())
        return f"{head}.{_b64(nonce + sealed)}"

    def verify(self, token: str, now: datetime) -> Offer:
        """The offer inside ``token``; raises OfferInvalid if forged, OfferExpired if late."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise OfferInvalid("the offer token is malformed")
        aead = self._ring.get(parts[1])
        if aead is None:
            raise OfferInvalid("the offer token was sealed with an unknown key")
        try:
            raw = _unb64(parts[2])
            if len(raw) <= _NONCE_BYTES:
                raise OfferInvalid("the offer token is malformed")
            plain = aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], f"{_VERSION}.{parts[1]}".encode()
            )
            offer = _decoder.decode(plain)
        except InvalidTag as exc:
            raise OfferInvalid("the offer token was altered or sealed with another key") from exc
        except (ValueError, binascii.Error, msgspec.DecodeError) as exc:
            raise OfferInvalid("the offer token is malformed") from exc
        if now >= offer.expires_at:
            raise OfferExpired(f"offer {offer.id} expired at {offer.expires_at.isoformat()}")
        return offer
