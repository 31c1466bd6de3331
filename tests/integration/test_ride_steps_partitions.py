"""The ride steps on the order's own day partition (ADR 0017, migration 0011) at the
edges of partitioning: an order of yesterday finished today, a day without a partition
of its own (the default partition), and maintenance moving rows into a new partition,
archiving or dropping one after a connection looked it up. Each step must apply or
refuse exactly as the same step on ``orders`` does.

These tests create, detach and drop partitions, so the module migrates a database of
its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from command_api import repository as repo
from migrations.maintenance import run_partition_maintenance
from migrations.runner import migrate
from shared.domain import NewOrder, Order
from shared.ids import created_at_of, uuid7
from shared.lifecycle import NEW_ORDER, decide_finish, decide_settle
from shared.settings import Settings
from tests import conftest
from tests.vectors import DOMAIN_PRICING

HOT_DAYS = 10


@pytest.fixture(scope="module")
async def settings(base_settings: Settings, run_id: str) -> AsyncIterator[Settings]:
    settings = base_settings.replace(
        db={"url": conftest.test_database_url(f"scooters_test_{run_id}_steps_parts")},
        maintenance={"partition_premake_days": 2, "hot_days": HOT_DAYS, "retention_days": 400},
    )
    await migrate(settings)
    yield settings
    await conftest.drop_database(settings.db.url)


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.db.url)
    yield conn
    await conn.close()


def order_at(when: datetime) -> NewOrder:
    order_id = uuid7(int(when.timestamp() * 1000))
    created_at = created_at_of(order_id)
    tag = uuid.uuid4().hex[:10]
    status, payment_status = NEW_ORDER
    return NewOrder(
        id=str(order_id),
        offer_id=str(uuid.uuid4()),
        user_id=f"parts-user-{tag}",
        scooter_id=f"parts-scooter-{tag}",
        zone_id="zone-1",
        status=status,
        payment_status=payment_status,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        free_ride_seconds=5,
        created_at=created_at,
        started_at=created_at,
        version=1,
        pricing=DOMAIN_PRICING,
    )


async def make_partition(conn: asyncpg.Connection, when: datetime) -> str:
    """The partition of ``when``'s UTC day, made now (pg_partman takes the time given as
    the partition's start)."""
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    await conn.execute(
        "SELECT partman.create_partition_time('public.orders', ARRAY[$1::timestamptz])", day
    )
    return await table_of_day(conn, when)


async def table_of_day(conn: asyncpg.Connection, when: datetime) -> str:
    name = await conn.fetchval(
        "SELECT name FROM orders_partitions() WHERE lo <= $1 AND $1 < hi", when
    )
    assert name is not None, f"no partition for {when}"
    return str(name)


async def where(conn: asyncpg.Connection, order: NewOrder | Order) -> str | None:
    """The table (of any schema) holding the order's row."""
    found = await conn.fetchval(
        "SELECT c.relnamespace::regnamespace::text || '.' || c.relname FROM pg_class c"
        " WHERE c.oid = (SELECT tableoid FROM orders WHERE id = $1)",
        uuid.UUID(order.id),
    )
    return None if found is None else str(found)


def key(order: NewOrder | Order) -> tuple[uuid.UUID, datetime]:
    order_id = uuid.UUID(order.id)
    return order_id, created_at_of(order_id)


async def start(conn: asyncpg.Connection, order: NewOrder) -> Order:
    await repo.start_ride(conn, order, order.created_at + timedelta(minutes=5), 1, 60.0)
    active = await repo.activate_ride(conn, *key(order), datetime.now(UTC))
    assert active is not None
    assert (active.status, active.version) == ("active", 2)
    return active


async def finish(conn: asyncpg.Connection, order: Order) -> Order | None:
    decision = decide_finish(
        started_at=order.started_at,
        finished_at=order.started_at + timedelta(seconds=8),
        price_per_minute=order.price_per_minute,
        price_unlock=order.price_unlock,
        free_ride_seconds=order.free_ride_seconds,
    )
    return await repo.finish_ride(conn, *key(order), decision, 10, '[{"x": 1}]', 60.0, order)


async def settle(conn: asyncpg.Connection, order: Order) -> Order | None:
    return await repo.settle_charge(conn, *key(order), decide_settle(48))


async def events(conn: asyncpg.Connection, order: NewOrder | Order) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT event_type, order_version FROM outbox WHERE order_id = $1 ORDER BY id",
        uuid.UUID(order.id),
    )
    return [(r["event_type"], r["order_version"]) for r in rows]


def on_partition(conn: asyncpg.Connection, table: str) -> bool:
    """Whether a step of this connection was sent to ``table`` itself."""
    known = repo._partitions.get(conn)
    return known is not None and any(t == table for _, t in known.statements)


async def test_partitions_are_listed_with_their_days(conn: asyncpg.Connection) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = await conn.fetch("SELECT name, lo, hi FROM orders_partitions()")
    assert len(rows) >= 3  # yesterday (partman's premake back), today, tomorrow...
    by_lo = {r["lo"]: r for r in rows}
    assert by_lo[today]["hi"] == today + timedelta(days=1)
    assert by_lo[today]["name"] == await table_of_day(conn, datetime.now(UTC))
    default = await conn.fetchval("SELECT to_regclass('orders_default') IS NOT NULL")
    assert default  # pg_partman's default partition exists, and is not listed
    assert all("default" not in r["name"] for r in rows)


async def test_a_ride_of_yesterday_ends_and_settles_today_on_its_partition(
    conn: asyncpg.Connection,
) -> None:
    late_yesterday = datetime.now(UTC).replace(hour=23, minute=59) - timedelta(days=1)
    table = await make_partition(conn, late_yesterday)
    order = order_at(late_yesterday)
    active = await start(conn, order)
    ended = await finish(conn, active)
    assert ended is not None
    assert (ended.status, ended.payment_status, ended.version) == ("finished", "pending", 3)
    assert await finish(conn, active) is None  # no longer active
    settled = await settle(conn, ended)
    assert settled is not None
    assert (settled.payment_status, settled.version) == ("charged", 4)
    assert await settle(conn, ended) is None  # settled already
    assert await where(conn, order) == table.replace('"', "")
    assert on_partition(conn, table)
    assert await events(conn, order) == [
        ("order_started", 2),
        ("order_finished", 3),
        ("payment_settled", 4),
    ]
    summary = await conn.fetchrow(
        "SELECT active_rides, rides_count, total_charged FROM user_summary WHERE user_id = $1",
        order.user_id,
    )
    assert summary is not None
    assert tuple(summary) == (0, 1, 48)


async def test_a_day_without_a_partition_goes_through_orders_until_it_has_one(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no partition: 0002 made 7 days back, premake is 2 ahead, the hot window is 10
    when = datetime.now(UTC) - timedelta(days=HOT_DAYS - 1)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM orders_partitions() WHERE lo <= $1 AND $1 < hi", when
        )
        == 0
    )
    order = order_at(when)
    active = await start(conn, order)  # in the default partition, through orders
    assert await where(conn, order) == "public.orders_default"
    # maintenance makes the day's partition and moves the row out of the default one;
    # this connection's list of partitions still says the day has none
    await conn.execute("SELECT partman.partition_data_time('public.orders', p_batch_count := 10)")
    table = await table_of_day(conn, when)
    assert await where(conn, order) == table.replace('"', "")
    ended = await finish(conn, active)
    assert ended is not None
    assert ended.version == 3
    assert not on_partition(conn, table)
    monkeypatch.setattr(repo, "PARTITIONS_TTL", 0.0)  # the list is read again
    settled = await settle(conn, ended)
    assert settled is not None
    assert (settled.payment_status, settled.version) == ("charged", 4)
    assert on_partition(conn, table)
    assert [e for e, _ in await events(conn, order)] == [
        "order_started",
        "order_finished",
        "payment_settled",
    ]


async def test_a_partition_detached_after_the_lookup_is_a_row_not_found(
    conn: asyncpg.Connection,
) -> None:
    when = datetime.now(UTC) - timedelta(days=4)
    table = await make_partition(conn, when)
    order = order_at(when)
    active = await start(conn, order)
    assert on_partition(conn, table)
    await conn.execute(f"ALTER TABLE orders DETACH PARTITION {table}")
    detached = True
    try:
        assert await finish(conn, active) is None  # as through orders: no such row
        row = await conn.fetchrow(
            f"SELECT status, version FROM {table} WHERE id = $1", uuid.UUID(order.id)
        )
        assert row is not None
        assert tuple(row) == ("active", 2)  # the detached table is not written
        await conn.execute(f"DROP TABLE {table}")
        detached = False
        # the finish prepared on that table now names none: the step goes to orders
        assert await finish(conn, active) is None
        assert repo._partitions.get(conn) is None  # the connection forgot its list
        assert await events(conn, order) == [("order_started", 2)]
    finally:
        if detached:
            await conn.execute(f"DROP TABLE {table}")


async def test_maintenance_archiving_or_dropping_a_known_partition(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    # past the hot window; at noon, so both orders are of that day
    when = (datetime.now(UTC) - timedelta(days=HOT_DAYS + 3)).replace(hour=12)
    table = await make_partition(conn, when)
    archived, dropped = order_at(when), order_at(when + timedelta(seconds=1))
    first = await start(conn, archived)
    second = await start(conn, dropped)
    assert on_partition(conn, table)
    assert await where(conn, archived) == table.replace('"', "")

    report = await run_partition_maintenance(conn, settings)  # moves the day to archive
    assert report.archived >= 1
    assert await where(conn, archived) is None
    assert await finish(conn, first) is None  # the name is gone: the step went to orders
    assert repo._partitions.get(conn) is None  # the connection forgot its list
    name = table.split(".", 1)[1]
    assert await conn.fetchval(f"SELECT status FROM archive.{name} WHERE id = $1", key(first)[0])
    # inside a transaction a step never sends to a partition: no error to abort it
    async with conn.transaction():
        assert await finish(conn, second) is None
        assert await conn.fetchval("SELECT 1") == 1
    # retention drops the archived table; the steps of other days go on as before
    await conn.execute(f"DROP TABLE archive.{name}")
    assert await settle(conn, first) is None
    assert await events(conn, archived) == [("order_started", 2)]
    today = order_at(datetime.now(UTC))
    assert await finish(conn, await start(conn, today)) is not None
    assert on_partition(conn, await table_of_day(conn, datetime.now(UTC)))


async def test_a_ride_on_orders_and_on_its_partition_write_the_same(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for direct in (True, False):
        monkeypatch.setattr(repo, "DIRECT_PARTITIONS", direct)
        order = order_at(datetime.now(UTC))
        active = await start(conn, order)
        ended = await finish(conn, active)
        assert ended is not None
        settled = await settle(conn, ended)
        assert settled is not None
        shape = [
            (o.status, o.payment_status, o.version, o.total_amount, o.distance_meters)
            for o in (active, ended, settled)
        ]
        track = await conn.fetchval("SELECT track::text FROM orders WHERE id = $1", key(order)[0])
        results.append((shape, await events(conn, order), track))
    assert results[0] == results[1]
