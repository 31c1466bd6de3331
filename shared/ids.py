"""Time-ordered ids (UUIDv7) that embed their creation time.

Orders are partitioned by ``created_at``; because the id carries the same
millisecond timestamp, every lookup by id can name the partition key.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

# 9999-12-31T23:59:59.999Z: a UUIDv7 naming a later time has no creation time a datetime holds
MAX_MS = 253_402_300_799_999


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new RFC 9562 version-7 UUID for the given (or current) Unix time in ms."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)


def created_at_of(order_id: uuid.UUID) -> datetime:
    """The creation time embedded in a UUIDv7 (millisecond precision, UTC)."""
    if order_id.version != 7:
        raise ValueError("not a UUIDv7")
    ms = order_id.int >> 80
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def parse_order_id(text: str) -> uuid.UUID | None:
    """The UUIDv7 in ``text``, or None when it is not one (so callers answer 404); also
    None for one whose time is past :data:`MAX_MS` (:func:`created_at_of` would raise)."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    return value if value.version == 7 and value.int >> 80 <= MAX_MS else None
