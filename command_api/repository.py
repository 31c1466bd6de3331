"""SQL of the command side, by hand. Every query on ``orders`` names the partition key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from shared.events import OrderSnapshot
from shared.ids import created_at_of

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_snapshot = msgspec.json.Decoder(OrderSnapshot)
REFUSED = "SC409"  # SQLSTATE of a refused step (migrations/sql/0003_ride_steps.sql)


class Refused(Exception):
    """A step refused (and rolled back); ``code`` is the reason, e.g. ``scooter_busy``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _decode(text: str | None) -> OrderSnapshot | None:
    return None if text is None else _snapshot.decode(text)


# --- ride steps: one round trip each (functions in migrations/sql/0003_ride_steps.sql) -----


async def start_ride(
    conn: Connection, values: dict[str, Any], max_rides: int, hold_due_seconds: float
) -> None:
    """Claim offer, scooter and ride slot; write the order ``starting`` and the owed hold.

    Raises :class:`Refused` with ``offer_already_used``, ``scooter_busy``,
    ``user_has_debt`` or ``too_many_active_rides``.
    """
    try:
        await conn.execute(
            "SELECT start_ride($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            values["id"],
            values["created_at"],
            values["offer_id"],
            values["expires_at"],
            values["user_id"],
            values["scooter_id"],
            values["zone_id"],
            values["price_per_minute"],
            values["price_unlock"],
            values["deposit"],
            values["free_ride_seconds"],
            values["pricing"],
            max_rides,
            hold_due_seconds,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == REFUSED:
            raise Refused(str(exc.args[0])) from None
        raise


async def activate_ride(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, started_at: datetime
) -> OrderSnapshot | None:
    """``starting`` → ``active`` once the hold is confirmed; None if it was undone meanwhile."""
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(activate_ride($1, $2, $3))::text", order_id, created_at, started_at
        )
    )


async def reject_start(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, release: bool
) -> bool:
    """Undo a ``starting`` order (its hold failed); False if it was not ``starting``."""
    return bool(
        await conn.fetchval("SELECT reject_start($1, $2, $3)", order_id, created_at, release)
    )


async def get_order(
    conn: Connection, order_id: uuid.UUID, created_at: datetime
) -> OrderSnapshot | None:
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(order_snapshot_of(o))::text FROM orders o"
            " WHERE id = $1 AND created_at = $2",
            order_id,
            created_at,
        )
    )


async def finish_ride(
    conn: Connection, values: dict[str, Any], charge_due_seconds: float
) -> OrderSnapshot | None:
    """End an active ride and owe its charge; None when it was no longer active."""
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(finish_ride($1, $2, $3, $4, $5, $6, $7, $8, $9))::text",
            values["id"],
            values["created_at"],
            values["status"],
            values["finished_at"],
            values["duration_seconds"],
            values["total_amount"],
            values["distance_meters"],
            values["track"],
            charge_due_seconds,
        )
    )


async def settle_charge(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, status: str
) -> OrderSnapshot | None:
    """Record the charge's outcome (charged, released or debt); None if settled already."""
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(settle_charge($1, $2, $3))::text", order_id, created_at, status
        )
    )


async def recorded_debt(conn: Connection, user_id: str) -> int:
    """What the rider owes us for charges our retries gave up on (0 if nothing)."""
    debt = await conn.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", user_id)
    return int(debt or 0)


async def order_of_offer(conn: Connection, offer_id: uuid.UUID) -> OrderSnapshot | None:
    """The order an offer started (while its redemption is kept), in any state."""
    order_id = await conn.fetchval(
        "SELECT order_id FROM offer_redemptions WHERE offer_id = $1", offer_id
    )
    return None if order_id is None else await get_order(conn, order_id, created_at_of(order_id))


async def stale_starts(
    conn: Connection,
    offer_id: uuid.UUID,
    scooter_id: str,
    user_id: str,
    own_older_than: float,
    older_than: float,
) -> list[asyncpg.Record]:
    """``starting`` orders in this start's way, presumed dead (their requests died before
    the hold was confirmed): the offer's own start older than ``own_older_than`` seconds,
    a start on the scooter or of the rider older than ``older_than``."""
    return await conn.fetch(
        "SELECT o.id, o.created_at FROM active_rides a"
        " JOIN orders o ON o.id = a.order_id AND o.created_at = a.order_created_at"
        " WHERE o.status = 'starting' AND ("
        "   (a.order_id = (SELECT order_id FROM offer_redemptions WHERE offer_id = $1)"
        "    AND o.created_at <= now() - make_interval(secs => $4))"
        "   OR ((a.scooter_id = $2 OR a.user_id = $3)"
        "       AND o.created_at <= now() - make_interval(secs => $5)))",
        offer_id,
        scooter_id,
        user_id,
        own_older_than,
        older_than,
    )


# --- payment operations -----------------------------------------------------------------------


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
    conn: Connection, scope: str, key: str, request_hash: bytes, lease_seconds: float
) -> tuple[bool, asyncpg.Record | None]:
    """Claim a key for this request: ``(resumed, stored)``.

    ``(False, None)``: the key is new and now ours. ``(True, None)``: it was claimed
    ``lease_seconds`` or longer ago for the same request and never completed (that
    request died); the claim is now ours. ``(False, row)``: someone else holds or
    completed it; ``row`` has ``request_hash``, ``status_code`` and ``response``.
    """
    claimed = await conn.fetchrow(
        "INSERT INTO idempotency_keys AS k (scope, key, request_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (scope, key) DO UPDATE SET claimed_at = now()"
        "  WHERE k.status_code IS NULL AND k.request_hash = excluded.request_hash"
        "    AND k.claimed_at <= now() - make_interval(secs => $4)"
        " RETURNING k.xmax <> 0 AS resumed",
        scope,
        key,
        request_hash,
        lease_seconds,
    )
    if claimed is not None:
        return bool(claimed["resumed"]), None
    stored = await conn.fetchrow(
        "SELECT request_hash, status_code, response FROM idempotency_keys"
        " WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    return False, stored


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
