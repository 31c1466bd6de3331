"""SQL of the command side, by hand. Every query on ``orders`` names the partition key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from shared.domain import NewOrder, Order
from shared.lifecycle import (
    ACTIVATE,
    DEBT_ALLOWED,
    REJECT,
    FinishDecision,
    OperationState,
    SettleDecision,
)

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_order = msgspec.json.Decoder(Order)
_json = msgspec.json.Encoder()
REFUSED = "SC409"  # SQLSTATE of a refused step (migrations/sql/0004_ride_steps_apply.sql)


class Refused(Exception):
    """A step refused (and rolled back); ``code`` is a ``shared.lifecycle.Refusal``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _decode(text: str | None) -> Order | None:
    return None if text is None else _order.decode(text)


# --- ride steps: one round trip each (functions in migrations/sql/0004_ride_steps_apply.sql) -
# The steps apply what shared.lifecycle decided; the SQL keeps only the row guards.


async def start_ride(
    conn: Connection,
    order: NewOrder,
    offer_expires_at: datetime,
    max_rides: int,
    hold_due_seconds: float,
) -> None:
    """Claim offer, scooter and ride slot; write ``order`` (one jsonb value) and the owed hold.

    Raises :class:`Refused` with a ``shared.lifecycle.Refusal`` code.
    """
    try:
        await conn.execute(
            "SELECT start_ride($1, $2, $3, $4, $5)",
            _json.encode(order).decode(),
            offer_expires_at,
            max_rides,
            DEBT_ALLOWED,
            hold_due_seconds,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == REFUSED:
            raise Refused(str(exc.args[0])) from None
        raise


async def activate_ride(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, started_at: datetime
) -> Order | None:
    """Apply ``ACTIVATE`` once the hold is confirmed; None if the start was undone meanwhile."""
    step = ACTIVATE
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(activate_ride($1, $2, $3, $4, $5, $6))::text",
            order_id,
            created_at,
            started_at,
            step.status_from,
            step.status_to,
            step.payment_to,
        )
    )


async def reject_start(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, release: bool
) -> bool:
    """Apply ``REJECT`` (the hold failed) and free the claims; False if it was not starting."""
    step = REJECT
    return bool(
        await conn.fetchval(
            "SELECT reject_start($1, $2, $3, $4, $5, $6)",
            order_id,
            created_at,
            step.status_from,
            step.status_to,
            step.payment_to,
            release,
        )
    )


async def get_order(conn: Connection, order_id: uuid.UUID, created_at: datetime) -> Order | None:
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(order_snapshot_of(o))::text FROM orders o"
            " WHERE id = $1 AND created_at = $2",
            order_id,
            created_at,
        )
    )


async def finish_ride(
    conn: Connection,
    order_id: uuid.UUID,
    created_at: datetime,
    decision: FinishDecision,
    distance_meters: int,
    track: str | None,
    charge_due_seconds: float,
) -> Order | None:
    """Apply ``decision`` to an active ride and owe its charge; None when it was no longer
    active (another finish won). ``track`` is the GPS track as JSON text, or None."""
    step = decision.transition
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(finish_ride($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12))::text",
            order_id,
            created_at,
            step.status_from,
            step.status_to,
            step.payment_to,
            decision.finished_at,
            decision.duration_seconds,
            decision.total_amount,
            distance_meters,
            track,
            decision.rides_count_delta,
            charge_due_seconds,
        )
    )


async def settle_charge(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, decision: SettleDecision
) -> Order | None:
    """Apply ``decision`` (charged, released or debt); None if settled already."""
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(settle_charge($1, $2, $3, $4, $5, $6, $7))::text",
            order_id,
            created_at,
            decision.payment_from,
            decision.payment_to,
            decision.operation_state,
            decision.total_charged_delta,
            decision.debt_delta,
        )
    )


async def recorded_debt(conn: Connection, user_id: str) -> int:
    """What the rider owes us for charges our retries gave up on (0 if nothing)."""
    debt = await conn.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", user_id)
    return int(debt or 0)


# --- payment operations -----------------------------------------------------------------------


async def finish_payment_operation(
    conn: Connection, order_id: uuid.UUID, kind: str, state: str = OperationState.DONE
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
