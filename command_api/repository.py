"""SQL of the command side, by hand. Every query on ``orders`` names the partition key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from shared.events import Event, OrderSnapshot, UserSummarySnapshot, event_encoder

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

ORDER_COLUMNS = (
    "id, offer_id, user_id, scooter_id, zone_id, status, payment_status, price_per_minute,"
    " price_unlock, deposit, free_ride_seconds, created_at, started_at, finished_at,"
    " duration_seconds, total_amount, distance_meters, version"
)
SUMMARY_COLUMNS = "user_id, rides_count, total_charged, debt, last_payment_status, version"


def order_snapshot(row: asyncpg.Record) -> OrderSnapshot:
    """The order as events and answers show it (never the raw track)."""
    values = dict(row)
    values["id"] = str(values["id"])
    values["offer_id"] = str(values["offer_id"])
    return OrderSnapshot(**values)


def summary_snapshot(row: asyncpg.Record) -> UserSummarySnapshot:
    return UserSummarySnapshot(**dict(row))


# --- starting a ride --------------------------------------------------------------------------


async def claim_offer(
    conn: Connection, offer_id: uuid.UUID, order_id: uuid.UUID, expires_at: datetime
) -> bool:
    """Mark the offer used by ``order_id``; False when another order has it."""
    claimed = await conn.fetchval(
        "INSERT INTO offer_redemptions (offer_id, order_id, expires_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (offer_id) DO NOTHING RETURNING true",
        offer_id,
        order_id,
        expires_at,
    )
    return bool(claimed)


async def occupy_scooter(
    conn: Connection, scooter_id: str, order_id: uuid.UUID, created_at: datetime, user_id: str
) -> bool:
    """Make ``order_id`` the scooter's one active ride; False when it is busy."""
    taken = await conn.fetchval(
        "INSERT INTO active_rides (scooter_id, order_id, order_created_at, user_id, started_at)"
        " VALUES ($1, $2, $3, $4, $3) ON CONFLICT (scooter_id) DO NOTHING RETURNING true",
        scooter_id,
        order_id,
        created_at,
        user_id,
    )
    return bool(taken)


async def take_ride_slot(conn: Connection, user_id: str, max_rides: int) -> str:
    """Count one more active ride for the user: "ok", "debt" or "limit"."""
    ok = await conn.fetchval(
        "INSERT INTO user_summary AS s (user_id, active_rides) VALUES ($1, 1)"
        " ON CONFLICT (user_id) DO UPDATE SET active_rides = s.active_rides + 1,"
        " updated_at = now() WHERE s.active_rides < $2 AND s.debt = 0 RETURNING true",
        user_id,
        max_rides,
    )
    if ok:
        return "ok"
    debt = await conn.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", user_id)
    return "debt" if debt else "limit"


async def insert_order(conn: Connection, values: dict[str, Any]) -> None:
    """Write a new order in state ``starting`` (before its hold)."""
    await conn.execute(
        "INSERT INTO orders (id, created_at, offer_id, user_id, scooter_id, zone_id,"
        " price_per_minute, price_unlock, deposit, free_ride_seconds, status, payment_status,"
        " started_at, pricing) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
        " 'starting', 'holding', $2, $11)",
        values["id"],
        values["created_at"],
        values["offer_id"],
        values["user_id"],
        values["scooter_id"],
        values["zone_id"],
        values["price_per_minute"],
        values["price_unlock"],
        values["deposit"],
        values["free_ride_seconds"],
        values["pricing"],
    )


async def activate_order(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, started_at: datetime
) -> asyncpg.Record | None:
    """``starting`` → ``active`` once the hold is confirmed; None if it was undone meanwhile."""
    return await conn.fetchrow(
        f"UPDATE orders SET status = 'active', payment_status = 'held', started_at = $3,"
        f" version = version + 1, updated_at = now()"
        f" WHERE id = $1 AND created_at = $2 AND status = 'starting' RETURNING {ORDER_COLUMNS}",
        order_id,
        created_at,
        started_at,
    )


async def reject_order(
    conn: Connection, order_id: uuid.UUID, created_at: datetime
) -> asyncpg.Record | None:
    """Undo a start whose hold failed: the order is rejected, scooter, slot and offer freed."""
    row = await conn.fetchrow(
        f"UPDATE orders SET status = 'rejected', payment_status = 'failed',"
        f" version = version + 1, updated_at = now()"
        f" WHERE id = $1 AND created_at = $2 AND status = 'starting' RETURNING {ORDER_COLUMNS}",
        order_id,
        created_at,
    )
    if row is None:
        return None
    await conn.execute("DELETE FROM active_rides WHERE order_id = $1", order_id)
    await conn.execute("DELETE FROM offer_redemptions WHERE offer_id = $1", row["offer_id"])
    await conn.execute(
        "UPDATE user_summary SET active_rides = active_rides - 1, updated_at = now()"
        " WHERE user_id = $1",
        row["user_id"],
    )
    return row


# --- orders -----------------------------------------------------------------------------------


async def lock_order(
    conn: Connection, order_id: uuid.UUID, created_at: datetime
) -> asyncpg.Record | None:
    """The order row, locked until the transaction ends (serialises finishes)."""
    return await conn.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND created_at = $2 FOR UPDATE",
        order_id,
        created_at,
    )


async def get_order(
    conn: Connection, order_id: uuid.UUID, created_at: datetime
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND created_at = $2",
        order_id,
        created_at,
    )


async def end_ride(conn: Connection, values: dict[str, Any]) -> asyncpg.Record:
    """Record the end of an active ride and free its scooter; the charge is still pending."""
    row = await conn.fetchrow(
        f"UPDATE orders SET status = $3, payment_status = 'pending', finished_at = $4,"
        f" duration_seconds = $5, total_amount = $6, distance_meters = $7, track = $8,"
        f" version = version + 1, updated_at = now()"
        f" WHERE id = $1 AND created_at = $2 RETURNING {ORDER_COLUMNS}",
        values["id"],
        values["created_at"],
        values["status"],
        values["finished_at"],
        values["duration_seconds"],
        values["total_amount"],
        values["distance_meters"],
        values["track"],
    )
    assert row is not None
    await conn.execute("DELETE FROM active_rides WHERE order_id = $1", values["id"])
    return row


async def count_finished_ride(conn: Connection, user_id: str, rode: bool) -> asyncpg.Record:
    """Free the user's ride slot; count the ride when it was not cancelled."""
    row = await conn.fetchrow(
        f"UPDATE user_summary SET active_rides = greatest(active_rides - 1, 0),"
        f" rides_count = rides_count + $2::int, version = version + 1, updated_at = now()"
        f" WHERE user_id = $1 RETURNING {SUMMARY_COLUMNS}",
        user_id,
        1 if rode else 0,
    )
    assert row is not None
    return row


async def settle_order(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, payment_status: str
) -> asyncpg.Record | None:
    """``pending`` → ``payment_status`` (charged, released or debt); None if already settled."""
    return await conn.fetchrow(
        f"UPDATE orders SET payment_status = $3, version = version + 1, updated_at = now()"
        f" WHERE id = $1 AND created_at = $2 AND payment_status = 'pending'"
        f" RETURNING {ORDER_COLUMNS}",
        order_id,
        created_at,
        payment_status,
    )


async def record_payment_outcome(
    conn: Connection, user_id: str, charged: int, debt: int, status: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"UPDATE user_summary SET total_charged = total_charged + $2, debt = debt + $3,"
        f" last_payment_status = $4, version = version + 1, updated_at = now()"
        f" WHERE user_id = $1 RETURNING {SUMMARY_COLUMNS}",
        user_id,
        charged,
        debt,
        status,
    )
    assert row is not None
    return row


async def append_event(conn: Connection, event: Event) -> None:
    """Append the event to the outbox, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)"
        " VALUES ($1, $2, $3, $4, $5)",
        type(event).__struct_config__.tag,
        uuid.UUID(event.order.id),
        event.order.user_id,
        event.order.version,
        event_encoder.encode(event).decode(),
    )


# --- payment operations -----------------------------------------------------------------------


async def add_payment_operation(
    conn: Connection,
    order_id: uuid.UUID,
    kind: str,
    created_at: datetime,
    user_id: str,
    amount: int,
    delay_seconds: float,
) -> None:
    """Record a money movement we owe payments; the worker retries it once it is due."""
    await conn.execute(
        "INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount,"
        " next_attempt_at) VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))"
        " ON CONFLICT (order_id, kind) DO NOTHING",
        order_id,
        kind,
        created_at,
        user_id,
        amount,
        delay_seconds,
    )


async def finish_payment_operation(
    conn: Connection, order_id: uuid.UUID, kind: str, state: str = "done"
) -> bool:
    """Close a pending operation; False when someone else closed it first."""
    closed = await conn.fetchval(
        "UPDATE payment_operations SET state = $3, updated_at = now()"
        " WHERE order_id = $1 AND kind = $2 AND state = 'pending' RETURNING true",
        order_id,
        kind,
        state,
    )
    return bool(closed)


async def claim_due_operations(
    conn: Connection, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    """Due operations, leased to this worker (pushed into the future) so no other takes them."""
    return await conn.fetch(
        "UPDATE payment_operations p SET next_attempt_at = now() + make_interval(secs => $2),"
        " attempts = p.attempts + 1, updated_at = now()"
        " FROM (SELECT order_id, kind FROM payment_operations"
        "       WHERE state = 'pending' AND next_attempt_at <= now()"
        "       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        " WHERE p.order_id = due.order_id AND p.kind = due.kind"
        " RETURNING p.order_id, p.kind, p.order_created_at, p.user_id, p.amount, p.attempts",
        limit,
        lease_seconds,
    )


async def reschedule_operation(
    conn: Connection, order_id: uuid.UUID, kind: str, delay_seconds: float, error: str
) -> None:
    await conn.execute(
        "UPDATE payment_operations SET next_attempt_at = now() + make_interval(secs => $3),"
        " last_error = $4, updated_at = now()"
        " WHERE order_id = $1 AND kind = $2 AND state = 'pending'",
        order_id,
        kind,
        delay_seconds,
        error,
    )


# --- idempotency keys -------------------------------------------------------------------------


async def claim_idempotency_key(
    conn: Connection, scope: str, key: str, request_hash: bytes
) -> asyncpg.Record | None:
    """None when the key is new (now ours, in flight); else the stored row."""
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (scope, key) DO NOTHING RETURNING true",
        scope,
        key,
        request_hash,
    )
    if inserted:
        return None
    return await conn.fetchrow(
        "SELECT request_hash, status_code, response FROM idempotency_keys"
        " WHERE scope = $1 AND key = $2",
        scope,
        key,
    )


async def complete_idempotency_key(
    conn: Connection, scope: str, key: str, status_code: int, response: bytes
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE scope = $1 AND key = $2",
        scope,
        key,
        status_code,
        response,
    )


async def forget_idempotency_key(conn: Connection, scope: str, key: str) -> None:
    await conn.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)


def encode_json(value: Any) -> str:
    """A value as JSON text for a jsonb parameter."""
    return msgspec.json.encode(value).decode()
