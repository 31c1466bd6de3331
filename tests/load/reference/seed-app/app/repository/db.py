# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""The database: one psycopg (3) async connection pool per process, and the queries.

Connections are in autocommit mode; each write step is one explicit transaction.
psycopg prepares a statement on a connection after it was run 5 times (its default).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from app.settings import settings

pool = AsyncConnectionPool(
    settings.database_url,
    min_size=settings.db_pool_min,
    max_size=settings.db_pool_max,
    max_idle=settings.db_pool_max_idle_seconds,
    kwargs={"autocommit": True, "row_factory": dict_row},
    open=False,
)

ORDER_COLUMNS = (
    "id, offer_id, user_id, scooter_id, zone_id, status, price_per_minute, price_unlock,"
    " deposit, free_ride_seconds, created_at, finished_at, duration_seconds, total_amount,"
    " distance_meters"
)


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def create_order(order: dict[str, Any]) -> dict[str, Any]:
    """Insert an active order for an unused offer, at most one active ride per rider.

    The rider's summary row is locked first (upserted), so two starts of one rider (or
    of one offer, which belongs to one rider) run one after the other.
    """
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO user_summary (user_id) VALUES (%s)"
            " ON CONFLICT (user_id) DO UPDATE SET updated_at = now()"
            " RETURNING active_order_id",
            (order["user_id"],),
        )
        summary = await cur.fetchone()
        assert summary is not None
        if summary["active_order_id"] is not None:
            raise Refused(409, "the rider already has an active ride")
        cur = await conn.execute(
            "SELECT 1 FROM orders WHERE offer_id = %s LIMIT 1", (order["offer_id"],)
        )
        if await cur.fetchone() is not None:
            raise Refused(409, "the offer was already used")
        cur = await conn.execute(
            "INSERT INTO orders (id, offer_id, user_id, scooter_id, zone_id, status,"
            " price_per_minute, price_unlock, deposit, free_ride_seconds, created_at)"
            " VALUES (%(id)s, %(offer_id)s, %(user_id)s, %(scooter_id)s, %(zone_id)s, 'active',"
            " %(price_per_minute)s, %(price_unlock)s, %(deposit)s, %(free_ride_seconds)s,"
            f" %(created_at)s) RETURNING {ORDER_COLUMNS}",
            order,
        )
        row = await cur.fetchone()
        await conn.execute(
            "UPDATE user_summary SET active_order_id = %s, orders_count = orders_count + 1,"
            " last_order_at = %s, updated_at = now() WHERE user_id = %s",
            (order["id"], order["created_at"], order["user_id"]),
        )
    assert row is not None
    return row


async def get_order(order_id: uuid.UUID) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = %s", (order_id,))
        return await cur.fetchone()


async def finish_order(
    order: dict[str, Any],
    status: str,
    finished_at: datetime,
    duration: int,
    amount: int,
    distance: int,
    track: list[dict[str, float]],
) -> dict[str, Any] | None:
    """Record the end of an active order and the rider's totals; None if it had ended."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE orders SET status = %s, finished_at = %s, duration_seconds = %s,"
            " total_amount = %s, distance_meters = %s, track = %s"
            " WHERE id = %s AND created_at = %s AND status = 'active'"
            f" RETURNING {ORDER_COLUMNS}",
            (
                status,
                finished_at,
                duration,
                amount,
                distance,
                Jsonb(track),
                order["id"],
                order["created_at"],
            ),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        await conn.execute(
            "UPDATE user_summary SET active_order_id = NULL,"
            " rides_count = rides_count + %s, total_spent = total_spent + %s,"
            " updated_at = now() WHERE user_id = %s",
            (1 if status == "finished" else 0, amount, order["user_id"]),
        )
    return row


async def ping() -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
