"""Projection contract, screens and cursors: no I/O."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from query_api import projection
from query_api.screens import InvalidCursor, decode_cursor, encode_cursor, order_screen
from query_api.stores import SingleFlight
from shared.ids import created_at_of, uuid7
from shared.lifecycle import OrderStatus, PaymentStatus, decide_finish, ride_cost
from shared.views import (
    OrderView,
    created_at_ms,
    order_key,
    order_view_decoder,
    user_orders_key,
    user_summary_key,
    view_encoder,
)

STARTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def view(**changes: object) -> OrderView:
    order_id = str(uuid7(int(STARTED.timestamp() * 1000)))
    base = OrderView(
        id=order_id,
        user_id="u1",
        scooter_id="s1",
        zone_id="z1",
        status=OrderStatus.ACTIVE,
        payment_status=PaymentStatus.HELD,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        free_ride_seconds=5,
        created_at=STARTED,
        started_at=STARTED,
        version=1,
    )
    return msgspec.structs.replace(base, **changes)


def test_view_round_trips_through_msgpack() -> None:
    original = view(distance_meters=1200)
    assert order_view_decoder.decode(view_encoder.encode(original)) == original


def test_older_stored_views_still_decode() -> None:
    """Schema evolution: a view stored before a field existed decodes with the default."""

    class OrderViewV0(msgspec.Struct, kw_only=True):
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
        version: int

    old = msgspec.msgpack.encode(
        OrderViewV0(**{f: getattr(view(), f) for f in OrderViewV0.__struct_fields__})
    )
    decoded = order_view_decoder.decode(old)
    assert decoded.distance_meters is None
    assert decoded.schema == 1


def test_keys_share_hash_tags_for_cluster() -> None:
    assert order_key("p:", "abc") == "p:order:{abc}"
    assert user_orders_key("p:", "u1") == "p:{u:u1}:orders"
    assert user_summary_key("p:", "u1") == "p:{u:u1}:summary"


def test_score_is_the_ids_millisecond() -> None:
    order_id = uuid7()
    assert created_at_ms(created_at_of(order_id)) == order_id.int >> 80


@pytest.mark.parametrize("seconds", [0, 4, 5, 8, 59, 60, 61, 3_600])
def test_running_cost_is_the_charging_formula(seconds: int) -> None:
    screen = order_screen(view(), STARTED + timedelta(seconds=seconds, milliseconds=999))
    assert screen.elapsed_seconds == seconds
    assert screen.current_amount == ride_cost(seconds, 24, 45, 5)
    assert screen.total_amount is None


@pytest.mark.parametrize("seconds", [8, 600, 3_600, 86_400, 10 * 86_400])
def test_running_cost_stops_at_the_cap_as_the_charge_does(seconds: int) -> None:
    now = STARTED + timedelta(seconds=seconds)
    screen = order_screen(view(), now, max_charged_seconds=86_400, max_cost=1_000)
    finish = decide_finish(
        started_at=STARTED,
        finished_at=now,
        price_per_minute=24,
        price_unlock=45,
        free_ride_seconds=5,
        max_cost=1_000,
        max_charged_seconds=86_400,
    )
    assert screen.current_amount == finish.total_amount == min(ride_cost(seconds, 24, 45, 5), 1_000)


def test_eight_seconds_at_24_plus_45_costs_48() -> None:
    assert order_screen(view(), STARTED + timedelta(seconds=8)).current_amount == 48


def test_done_ride_shows_its_total_not_a_running_cost() -> None:
    done = view(
        status="finished",
        payment_status="charged",
        finished_at=STARTED,
        duration_seconds=90,
        total_amount=81,
        version=3,
    )
    screen = order_screen(done, STARTED + timedelta(days=1))
    assert (screen.current_amount, screen.total_amount, screen.elapsed_seconds) == (None, 81, 90)


def test_cursor_round_trip_and_garbage() -> None:
    order_id = str(uuid7())
    assert decode_cursor(encode_cursor(123, order_id)) == (123, order_id)
    for bad in ("", "%%%", "bm90LWEtY3Vyc29y", encode_cursor(-1, order_id)):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


def test_finished_ttl_counts_from_the_finish() -> None:
    now = STARTED + timedelta(days=2)
    assert projection.finished_ttl(STARTED, now, 7 * 86_400, 60) == 5 * 86_400
    assert projection.finished_ttl(STARTED, now, 86_400, 60) == 60  # late write: the floor
    assert projection.finished_ttl(None, now, 100, 0) == 100


def test_writes_name_scripts_and_keys() -> None:
    v = view()
    put = projection.put_order("p:", v, 0)
    assert (put.script, put.keys, put.args[0], put.args[2]) == (
        "put_view",
        (f"p:order:{{{v.id}}}",),
        1,
        0,
    )
    add = projection.add_recent("p:", "u1", [(v.id, 5)], keep=50, ttl=10, complete=True)
    assert add.keys == ("p:{u:u1}:orders",)
    assert add.args == (50, 10, "1", "*", 5, v.id)


async def test_single_flight_shares_one_call() -> None:
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 7

    flights = SingleFlight()
    results = await asyncio.gather(*(flights.run("k", slow) for _ in range(20)))
    assert results == [7] * 20
    assert calls == 1
    assert await flights.run("k", slow) == 7  # a later call runs again
    assert calls == 2
