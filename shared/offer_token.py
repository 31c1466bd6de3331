"""The offer token: the whole offer, signed, so offers need no database write.

Format: ``v1.<kid>.<payload>.<mac>`` where ``payload`` is the msgpack-encoded
:class:`~shared.domain.Offer` in unpadded base64url and ``mac`` is
HMAC-SHA256(key, ``v1.<kid>.<payload>``), also base64url. The key id lets keys
rotate: verification accepts any key in the keyring. Single use is enforced at
redemption by the ``offer_redemptions`` table, not by the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

import msgspec

from shared.domain import Offer
from shared.errors import OfferExpired, OfferInvalid

_VERSION = "v1"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Offer)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: str) -> str:
    """A short public name for a signing key (first bytes of its hash)."""
    return _b64(hashlib.sha256(key.encode()).digest()[:6])


class OfferSigner:
    """Signs offers with the current key; verifies with any key of the ring."""

    def __init__(self, key: str, previous_keys: tuple[str, ...] = ()) -> None:
        self._kid = key_id(key)
        self._key = key.encode()
        self._ring: Mapping[str, bytes] = {key_id(k): k.encode() for k in (key, *previous_keys)}

    def sign(self, offer: Offer) -> str:
        """The token the app sends back to start a ride from ``offer``."""
        head = f"{_VERSION}.{self._kid}.{_b64(_encoder.encode(offer))}"
        mac = hmac.new(self._key, head.encode(), hashlib.sha256).digest()
        return f"{head}.{_b64(mac)}"

    def verify(self, token: str, now: datetime) -> Offer:
        """The offer inside ``token``; raises OfferInvalid if forged, OfferExpired if late."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise OfferInvalid("the offer token is malformed")
        key = self._ring.get(parts[1])
        if key is None:
            raise OfferInvalid("the offer token was signed with an unknown key")
        head = token.rpartition(".")[0]
        try:
            mac = _unb64(parts[3])
            expected = hmac.new(key, head.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(mac, expected):
                raise OfferInvalid("the offer token's signature does not match")
            offer = _decoder.decode(_unb64(parts[2]))
        except (ValueError, msgspec.DecodeError) as exc:
            raise OfferInvalid("the offer token is malformed") from exc
        if now >= offer.expires_at:
            raise OfferExpired(f"offer {offer.id} expired at {offer.expires_at.isoformat()}")
        return offer
