# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""Starting and finishing a ride: hold the deposit, record the order; charge, record the end."""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import UTC, datetime

from fastapi import HTTPException

from app.api.schemas import OrderResponse, TrackPoint
from app.clients.external import ExternalClient
from app.repository import db
from app.utils.signing import verify_offer

EARTH_RADIUS_M = 6_371_008.8


def track_distance(track: list[TrackPoint]) -> int:
    """Length of the track (haversine between consecutive fixes), in metres."""
    total = 0.0
    for a, b in itertools.pairwise(track):
        lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
        dlon = math.radians(b.lon - a.lon)
        h = (
            math.sin((lat2 - lat1) / 2) ** 2
            + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
        )
        total += 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
    return int(total)


def ride_cost(seconds: int, per_minute: int, unlock: int, free_seconds: int) -> int:
    if seconds < free_seconds:
        return 0
    return seconds * per_minute // 60 + unlock


async def create_order(client: ExternalClient, user_id: str, offer_token: str) -> OrderResponse:
    offer = verify_offer(offer_token)
    if offer is None or offer.user_id != user_id:
        raise HTTPException(400, "invalid offer")
    now = datetime.now(UTC)
    if offer.expires_at < now:
        raise HTTPException(410, "the offer has expired")
    order_id = uuid.uuid4()
    await client.hold(user_id, str(order_id), offer.deposit)
    try:
        row = await db.create_order(
            {
                "id": order_id,
                "offer_id": uuid.UUID(offer.id),
                "user_id": user_id,
                "scooter_id": offer.scooter_id,
                "zone_id": offer.zone_id,
                "price_per_minute": offer.price_per_minute,
                "price_unlock": offer.price_unlock,
                "deposit": offer.deposit,
                "free_ride_seconds": offer.free_ride_seconds,
                "created_at": now,
            }
        )
    except db.Refused as refused:
        await client.release(user_id, str(order_id), offer.deposit)
        raise HTTPException(refused.status, refused.detail) from None
    return _answer(row)


async def finish_order(
    client: ExternalClient, user_id: str, order_id: str, track: list[TrackPoint]
) -> OrderResponse:
    try:
        key = uuid.UUID(order_id)
    except ValueError:
        raise HTTPException(404, "no such order") from None
    order = await db.get_order(key)
    if order is None or order["user_id"] != user_id:
        raise HTTPException(404, "no such order")
    if order["status"] != "active":
        return _answer(order)
    now = datetime.now(UTC)
    seconds = max(0, int((now - order["created_at"]).total_seconds()))
    amount = ride_cost(
        seconds, order["price_per_minute"], order["price_unlock"], order["free_ride_seconds"]
    )
    status = "cancelled" if seconds < order["free_ride_seconds"] else "finished"
    await client.clear(user_id, order_id, amount)
    row = await db.finish_order(
        order,
        status,
        now,
        seconds,
        amount,
        track_distance(track),
        [point.model_dump() for point in track],
    )
    if row is None:  # a concurrent finish recorded it first
        row = await db.get_order(key)
        assert row is not None
    return _answer(row)


def _answer(row: dict[str, object]) -> OrderResponse:
    return OrderResponse(
        **{**row, "id": str(row["id"]), "offer_id": str(row["offer_id"])}  # type: ignore[arg-type]
    )
