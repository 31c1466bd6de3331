"""Hand-written SQL of the read side: what a Redis miss, a page of history and a
rebuild read from Postgres. Never selects ``track``; every lookup of an order names
its partition key ``created_at`` (the id's timestamp), history pages bound it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from shared.ids import created_at_of
from shared.lifecycle import RIDER_VISIBLE
from shared.receipt import ReceiptInputs, receipt_inputs, receipt_of
from shared.views import OrderView, UserSummaryView

Executor = asyncpg.Connection | asyncpg.Pool | asyncpg.pool.PoolConnectionProxy

# The columns of an OrderView, from its fields (the ids as text, as the view holds them),
# and what its receipt is built from (shared.receipt.ReceiptInputs; migrations/sql/0008).
_VIEW_COLUMNS = ", ".join(
    [
        f"{name}::text AS {name}" if name == "id" else name
        for name in OrderView.__struct_fields__
        if name not in ("schema", "receipt")
    ]
    + [
        "pricing::text AS pricing",
        "order_refunds_json(id) AS refunds",
        "debt_hold_released(id) AS hold_released",
    ]
)
_VISIBLE = "status = ANY('{" + ",".join(RIDER_VISIBLE) + "}'::text[])"

_ORDER_BY_ID = f"""
SELECT {_VIEW_COLUMNS} FROM orders
 WHERE id = $1 AND created_at = $2 AND {_VISIBLE}
"""

# created_at is a function of id (UUIDv7), so the two ANYs match exactly the given
# orders, and the created_at list lets Postgres prune to their partitions.
_ORDERS_BY_IDS = f"""
SELECT {_VIEW_COLUMNS} FROM orders
 WHERE id = ANY($1::uuid[]) AND created_at = ANY($2::timestamptz[]) AND {_VISIBLE}
"""

# Keyset page, newest first, strictly older than the cursor (created_at, id).
_USER_PAGE = f"""
SELECT {_VIEW_COLUMNS} FROM orders
 WHERE user_id = $1 AND (created_at, id) < ($2, $3) AND created_at <= $2 AND {_VISIBLE}
 ORDER BY created_at DESC, id DESC
 LIMIT $4
"""

_USER_RECENT = f"""
SELECT id::text, created_at FROM orders
 WHERE user_id = $1 AND {_VISIBLE}
 ORDER BY created_at DESC, id DESC
 LIMIT $2
"""

_USERS_RECENT = f"""
SELECT user_id, id::text, created_at FROM (
    SELECT user_id, id, created_at,
           row_number() OVER (PARTITION BY user_id ORDER BY created_at DESC, id DESC) AS n
      FROM orders
     WHERE user_id = ANY($1::text[]) AND {_VISIBLE}
) ranked WHERE n <= $2
"""

_SUMMARY_COLUMNS = "user_id, rides_count, total_charged, debt, last_payment_status, version"
_SUMMARY = f"SELECT {_SUMMARY_COLUMNS} FROM user_summary WHERE user_id = $1"
_SUMMARIES = f"SELECT {_SUMMARY_COLUMNS} FROM user_summary WHERE user_id = ANY($1::text[])"

# Rebuild: a keyset walk over a time range; the range bounds prune partitions.
_RANGE_PAGE = f"""
SELECT {_VIEW_COLUMNS} FROM orders
 WHERE created_at >= $1 AND created_at < $2 AND (created_at, id) > ($3, $4) AND {_VISIBLE}
 ORDER BY created_at, id
 LIMIT $5
"""

_HAS_ORDERS = f"SELECT EXISTS (SELECT 1 FROM orders WHERE user_id = $1 AND {_VISIBLE})"

# the largest uuid: a cursor that starts "before everything" at a given time
MAX_UUID = uuid.UUID(int=(1 << 128) - 1)
MIN_UUID = uuid.UUID(int=0)


def _view(row: asyncpg.Record) -> OrderView:
    values = dict(row.items())
    inputs = receipt_inputs(
        values.pop("pricing"), values.pop("refunds"), values.pop("hold_released")
    )
    view = OrderView(**values)
    return msgspec.structs.replace(view, receipt=receipt_of(view, inputs))


def _summary(row: asyncpg.Record) -> UserSummaryView:
    return UserSummaryView(**dict(row.items()))


async def order_by_id(db: Executor, order_id: uuid.UUID) -> OrderView | None:
    """The order's view, or None when unknown or never shown (starting/rejected)."""
    row = await db.fetchrow(_ORDER_BY_ID, order_id, created_at_of(order_id))
    return None if row is None else _view(row)


async def orders_by_ids(db: Executor, order_ids: Sequence[uuid.UUID]) -> dict[str, OrderView]:
    """Views of several orders by id, keyed by id (missing ones are left out)."""
    rows = await db.fetch(_ORDERS_BY_IDS, list(order_ids), [created_at_of(i) for i in order_ids])
    return {row["id"]: _view(row) for row in rows}


async def user_page(
    db: Executor, user_id: str, before: tuple[datetime, uuid.UUID], limit: int
) -> list[OrderView]:
    """The user's orders strictly older than ``before``, newest first."""
    rows = await db.fetch(_USER_PAGE, user_id, before[0], before[1], limit)
    return [_view(row) for row in rows]


async def user_recent(db: Executor, user_id: str, limit: int) -> list[tuple[str, datetime]]:
    """The ids and creation times of the user's ``limit`` newest orders."""
    rows = await db.fetch(_USER_RECENT, user_id, limit)
    return [(row["id"], row["created_at"]) for row in rows]


async def users_recent(
    db: Executor, user_ids: Sequence[str], limit: int
) -> dict[str, list[tuple[str, datetime]]]:
    """:func:`user_recent` for many users in one query."""
    found: dict[str, list[tuple[str, datetime]]] = {u: [] for u in user_ids}
    for row in await db.fetch(_USERS_RECENT, list(user_ids), limit):
        found[row["user_id"]].append((row["id"], row["created_at"]))
    return found


async def has_orders(db: Executor, user_id: str) -> bool:
    """Whether the user ever had a shown order."""
    return bool(await db.fetchval(_HAS_ORDERS, user_id))


async def summary(db: Executor, user_id: str) -> UserSummaryView | None:
    """The user's summary, or None for a user the system has never seen."""
    row = await db.fetchrow(_SUMMARY, user_id)
    return None if row is None else _summary(row)


async def summaries(db: Executor, user_ids: Sequence[str]) -> list[UserSummaryView]:
    """Summaries of several users."""
    return [_summary(row) for row in await db.fetch(_SUMMARIES, list(user_ids))]


async def range_page(
    db: Executor, since: datetime, until: datetime, after: tuple[datetime, uuid.UUID], limit: int
) -> list[OrderView]:
    """Orders created in ``[since, until)`` after ``after``, oldest first."""
    rows = await db.fetch(_RANGE_PAGE, since, until, after[0], after[1], limit)
    return [_view(row) for row in rows]


# --- receipt inputs and track (issue 12): read from Postgres, not projected ---------------

_RECEIPT_INPUTS = """
SELECT id::text AS id, pricing::text AS pricing, order_refunds_json(id) AS refunds,
       debt_hold_released(id) AS hold_released
  FROM orders
 WHERE id = ANY($1::uuid[]) AND created_at = ANY($2::timestamptz[])
"""

# the json track, or the jsonb one of a ride finished before migration 0012 (ADR 0021)
_TRACK = f"""
SELECT user_id, coalesce(track::text, track_jsonb::text, '[]') AS track FROM orders
 WHERE id = $1 AND created_at = $2 AND {_VISIBLE}
"""


async def receipt_inputs_of(
    db: Executor, order_ids: Sequence[uuid.UUID]
) -> dict[str, ReceiptInputs]:
    """What the receipts of several orders are built from, by order id (the projector's
    one query per batch of events of ended rides)."""
    rows = await db.fetch(_RECEIPT_INPUTS, list(order_ids), [created_at_of(i) for i in order_ids])
    found = {
        row["id"]: receipt_inputs(row["pricing"], row["refunds"], row["hold_released"])
        for row in rows
    }
    return {order_id: inputs for order_id, inputs in found.items() if inputs is not None}


async def order_track(db: Executor, order_id: uuid.UUID) -> tuple[str, str] | None:
    """The order's owner and its GPS track as JSON text (``[]`` when none was sent)."""
    row = await db.fetchrow(_TRACK, order_id, created_at_of(order_id))
    return None if row is None else (row["user_id"], row["track"])
