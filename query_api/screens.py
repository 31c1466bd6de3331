"""What the app's screens receive: views turned into answers at read time.

The running cost of an active ride is computed here, on every read, with the same
function the command side charges (``shared.lifecycle.ride_charge``: the ride cost,
capped like the charge).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

import msgspec

from shared.domain import MAX_EPOCH_SECONDS, OrderFields
from shared.lifecycle import is_riding, ride_charge
from shared.receipt import Receipt
from shared.views import OrderView, UserSummaryView


class OrderScreen(OrderFields, frozen=True, kw_only=True):
    """The ride screen: the order's rider-visible fields (``shared.domain.OrderFields``;
    ``total_amount`` only once the ride ended) and what the time of the read adds."""

    elapsed_seconds: int
    current_amount: int | None  # active rides: the charge if the ride ended now
    receipt: Receipt | None = None  # finished or cancelled rides: the itemised receipt


class OrdersPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[OrderScreen]
    next_cursor: str | None


class SummaryScreen(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    rides_count: int
    total_charged: int
    debt: int
    last_payment_status: str | None
    version: int


def order_screen(
    view: OrderView, now: datetime, max_charged_seconds: int | None = None, max_cost: int = 0
) -> OrderScreen:
    """The ride screen of ``view`` at ``now``; the running cost stops growing after
    ``max_charged_seconds`` and at the ride cost cap ``max_cost``, as the charge does."""
    fields = msgspec.structs.asdict(view)
    del fields["free_ride_seconds"], fields["schema"]
    if is_riding(view.status):
        elapsed = max(0, int((now - view.started_at).total_seconds()))
        current: int | None = ride_charge(
            elapsed,
            view.price_per_minute,
            view.price_unlock,
            view.free_ride_seconds,
            max_charged_seconds=max_charged_seconds,
            max_cost=max_cost,
        )
        fields["total_amount"] = None
    else:
        elapsed = view.duration_seconds if view.duration_seconds is not None else 0
        current = None
    return OrderScreen(**fields, elapsed_seconds=elapsed, current_amount=current)


def summary_screen(view: UserSummaryView) -> SummaryScreen:
    return SummaryScreen(
        user_id=view.user_id,
        rides_count=view.rides_count,
        total_charged=view.total_charged,
        debt=view.debt,
        last_payment_status=view.last_payment_status,
        version=view.version,
    )


# --- cursor: opaque to the app, (created_at ms, order id) inside --------------------------


class InvalidCursor(ValueError):
    """The cursor was not made by us."""


def encode_cursor(created_at_ms: int, order_id: str) -> str:
    raw = f"{created_at_ms}.{order_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``(created_at ms, order id)`` of a cursor; raises :class:`InvalidCursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms_text, order_id = raw.split(".", 1)
        ms = int(ms_text)
        canonical = str(uuid.UUID(order_id))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("the cursor is malformed") from exc
    if not 0 <= ms <= MAX_EPOCH_SECONDS * 1000 or canonical != order_id:
        raise InvalidCursor("the cursor is malformed")
    return ms, order_id
