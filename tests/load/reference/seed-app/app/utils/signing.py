# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""Offer tokens: the offer as JSON, base64url, and its HMAC-SHA256 (the seed's signed offers)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from app.api.schemas import OfferPayload
from app.settings import settings


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: str) -> str:
    digest = hmac.new(settings.offer_secret.encode(), payload.encode(), hashlib.sha256).digest()
    return _b64(digest)


def sign_offer(offer: OfferPayload) -> str:
    payload = _b64(offer.model_dump_json().encode())
    return f"{payload}.{_mac(payload)}"


def verify_offer(token: str) -> OfferPayload | None:
    """The offer a token carries, or None if it was not signed by us."""
    payload, _, mac = token.partition(".")
    if not mac or not hmac.compare_digest(mac, _mac(payload)):
        return None
    try:
        return OfferPayload.model_validate_json(_unb64(payload))
    except ValueError:
        return None
