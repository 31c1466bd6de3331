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

from shared.events import OrderSnapshot, UserSummarySnapshot

VIEW_SCHEMA = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# Order statuses that exist for the rider; 'starting' and 'rejected' never are shown.
VISIBLE_STATUSES = ("active", "finished", "cancelled")


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    """What the ride screen needs; the raw GPS track is never part of it."""

    id: str
    user_id: str
    scooter_id: str
    zone_id: str
    status: str
    payment_status: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    free_ride_seconds: int
    created_at: datetime
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: int | None = None
    total_amount: int | None = None
    distance_meters: int | None = None
    version: int
    schema: int = VIEW_SCHEMA


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


def order_view_of(order: OrderSnapshot) -> OrderView:
    """The order view of an event's snapshot."""
    return OrderView(
        id=order.id,
        user_id=order.user_id,
        scooter_id=order.scooter_id,
        zone_id=order.zone_id,
        status=order.status,
        payment_status=order.payment_status,
        price_per_minute=order.price_per_minute,
        price_unlock=order.price_unlock,
        deposit=order.deposit,
        free_ride_seconds=order.free_ride_seconds,
        created_at=order.created_at,
        started_at=order.started_at,
        finished_at=order.finished_at,
        duration_seconds=order.duration_seconds,
        total_amount=order.total_amount,
        distance_meters=order.distance_meters,
        version=order.version,
    )


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
