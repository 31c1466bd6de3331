"""The activation snapshots a command API process keeps for its finishes (issue 13)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from command_api.rides import ActivatedRides
from shared.domain import Order
from shared.lifecycle import OrderStatus, PaymentStatus
from tests.vectors import DOMAIN_PRICING


def order(order_id: uuid.UUID) -> Order:
    now = datetime.now(UTC)
    return Order(
        id=str(order_id),
        user_id="user-1",
        scooter_id="scooter-1",
        zone_id="zone-1",
        status=OrderStatus.ACTIVE,
        payment_status=PaymentStatus.HELD,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        created_at=now,
        started_at=now,
        finished_at=None,
        duration_seconds=None,
        total_amount=None,
        distance_meters=None,
        version=2,
        offer_id=str(uuid.uuid4()),
        free_ride_seconds=5,
    )


PRICING = DOMAIN_PRICING


def test_a_snapshot_is_taken_once() -> None:
    rides = ActivatedRides()
    order_id = uuid.uuid4()
    rides.add(order_id, order(order_id), PRICING)
    taken = rides.take(order_id)
    assert taken is not None
    snapshot, inputs = taken
    assert snapshot.id == str(order_id)
    # an active ride's receipt inputs: the offer's pricing, no refunds, no released hold
    assert (inputs.pricing, inputs.refunds, inputs.hold_released_after_debt) == (
        PRICING,
        [],
        False,
    )
    assert rides.take(order_id) is None  # a second finish reads the row
    assert rides.take(uuid.uuid4()) is None  # another process's ride


def test_the_oldest_snapshots_give_way_past_the_limit() -> None:
    rides = ActivatedRides(limit=2)
    ids = [uuid.uuid4() for _ in range(3)]
    for order_id in ids:
        rides.add(order_id, order(order_id), PRICING)
    assert rides.take(ids[0]) is None
    assert rides.take(ids[1]) is not None
    assert rides.take(ids[2]) is not None
