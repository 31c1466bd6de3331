"""Read-side projections: the view Structs, their codecs and their Redis key names.

The projector is the only regular writer; the query API refills a missed key from
Postgres through the same versioned script. Stored views are msgpack and follow
msgspec's schema-evolution rules: a new field gets a default, a type never changes,
and ``schema`` is bumped when the meaning of a stored view changes.

Keys are Redis Cluster safe: every key that one script touches shares a hash tag
(``order:{<id>}`` for an order, ``{u:<user_id>}:...`` for a user's keys), and all
keys start with ``settings.redis.key_prefix`` (which must not contain braces).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from shared.domain import Order, OrderFields
from shared.events import UserSummarySnapshot
from shared.receipt import Receipt

VIEW_SCHEMA = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class OrderView(OrderFields, frozen=True, kw_only=True):
    """What the ride screen needs (the fields of :class:`shared.domain.OrderFields` plus
    ``free_ride_seconds`` for the running cost); the raw GPS track is never part of it.
    Only orders whose status is rider-visible (``shared.lifecycle.RIDER_VISIBLE``) have one."""

    free_ride_seconds: int
    schema: int = VIEW_SCHEMA
    # a finished or cancelled ride's receipt (shared.receipt), refunds included
    receipt: Receipt | None = None


# the stored order's fields a view leaves out (the view is derived by name, not spelled)
_NOT_IN_VIEW = tuple(f for f in Order.__struct_fields__ if f not in OrderView.__struct_fields__)


class UserSummaryView(msgspec.Struct, frozen=True, kw_only=True):
    """A rider's totals, as the summary screen shows them."""

    user_id: str
    rides_count: int
    total_charged: int
    debt: int
    last_payment_status: str | None = None
    version: int
    schema: int = VIEW_SCHEMA


view_encoder = msgspec.msgpack.Encoder()
order_view_decoder = msgspec.msgpack.Decoder(OrderView)
summary_view_decoder = msgspec.msgpack.Decoder(UserSummaryView)


def order_view_of(order: Order, receipt: Receipt | None = None) -> OrderView:
    """The order view of a stored order (an event's snapshot): its fields, by name, and
    ``receipt`` (the projector and the read side build it from what is stored with
    the order, ``shared.receipt.receipt_of``)."""
    fields = msgspec.structs.asdict(order)
    for name in _NOT_IN_VIEW:
        del fields[name]
    return OrderView(**fields, receipt=receipt)


def summary_view_of(summary: UserSummarySnapshot) -> UserSummaryView:
    """The summary view of an event's user snapshot."""
    return UserSummaryView(
        user_id=summary.user_id,
        rides_count=summary.rides_count,
        total_charged=summary.total_charged,
        debt=summary.debt,
        last_payment_status=summary.last_payment_status,
        version=summary.version,
    )


def created_at_ms(moment: datetime) -> int:
    """The score of an order in a user's recent list: its creation time in Unix ms."""
    return (moment - _EPOCH) // _MS


def moment_of_ms(ms: int) -> datetime:
    """The UTC time of a Unix millisecond count (inverse of ``created_at_ms``)."""
    return _EPOCH + timedelta(milliseconds=ms)


# --- keys ---------------------------------------------------------------------------------

# The member that marks a user's recent list as complete (filled from Postgres), scored
# below every order so that trimming by rank keeps it.
COMPLETE_MARK = "*"


def order_key(prefix: str, order_id: str) -> str:
    """Hash ``{v: version, d: msgpack OrderView}`` of one order."""
    return f"{prefix}order:{{{order_id}}}"


def user_orders_key(prefix: str, user_id: str) -> str:
    """Sorted set of the user's newest order ids, scored by created_at in ms."""
    return f"{prefix}{{u:{user_id}}}:orders"


def user_summary_key(prefix: str, user_id: str) -> str:
    """Hash ``{v: version, d: msgpack UserSummaryView}`` of one user."""
    return f"{prefix}{{u:{user_id}}}:summary"
