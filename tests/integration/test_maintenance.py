"""Partition maintenance and pruning against a real, freshly migrated database.

The archive/drop tests change pg_partman's config (small hot window and retention),
so this module migrates a database of its own instead of the run's shared one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from migrations import maintenance
from migrations.maintenance import partition_start, prune, run_partition_maintenance
from migrations.runner import migrate
from shared.settings import Settings
from tests import conftest


@pytest.fixture(scope="module")
async def settings(base_settings: Settings, run_id: str) -> AsyncIterator[Settings]:
    settings = base_settings.replace(
        db={"url": conftest.test_database_url(f"scooters_test_{run_id}_maint")},
        maintenance={
            "partition_premake_days": 4,
            "hot_days": 10,
            "retention_days": 40,
            "idempotency_ttl_seconds": 3_600,
            "outbox_keep_seconds": 600,
        },
    )
    await migrate(settings)
    yield settings
    await conftest.drop_database(settings.db.url)


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.db.url)
    yield conn
    await conn.close()


def day_name(when: datetime) -> str:
    return f"orders_p{when:%Y_%m_%d}"


async def table_exists(conn: asyncpg.Connection, schema: str, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{name}"))


async def insert_order(conn: asyncpg.Connection, created_at: datetime) -> uuid.UUID:
    order_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO orders (id, created_at, offer_id, user_id, scooter_id, zone_id,"
        " price_per_minute, price_unlock, deposit, free_ride_seconds, status,"
        " payment_status, started_at, pricing)"
        " VALUES ($1, $2, $3, 'user-1', 'scooter-1', 'zone-1', 24, 45, 300, 5,"
        " 'finished', 'charged', $2, '{}'::jsonb)",
        order_id,
        created_at,
        uuid.uuid4(),
    )
    return order_id


def test_partition_start_reads_both_partman_name_styles() -> None:
    day = datetime(2026, 3, 7, tzinfo=UTC)
    assert partition_start("orders_p2026_03_07", "orders_p", "YYYY_MM_DD") == day
    assert partition_start("orders_p20260307", "orders_p", "YYYYMMDD") == day
    assert partition_start("orders_default", "orders_p", "YYYY_MM_DD") is None
    assert partition_start("orders_p2026_3x", "orders_p", "YYYY_MM_DD") is None


async def test_partitions_exist_ahead(conn: asyncpg.Connection, settings: Settings) -> None:
    await run_partition_maintenance(conn, settings)
    for days in range(settings.maintenance.partition_premake_days + 1):
        row = await conn.fetchrow(
            "SELECT partition_table, table_exists FROM partman.show_partition_name("
            "'public.orders', (now() + make_interval(days => $1))::text)",
            days,
        )
        assert row is not None
        assert row["table_exists"], f"no partition for today + {days} days"
        assert row["partition_table"] == day_name(datetime.now(UTC) + timedelta(days=days))
    # A row written now lands in its day's partition, not in the default one.
    order_id = await insert_order(conn, datetime.now(UTC))
    where = await conn.fetchval(
        "SELECT tableoid::regclass::text FROM orders WHERE id = $1", order_id
    )
    assert where == day_name(datetime.now(UTC))


async def test_old_partitions_are_archived_then_dropped(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    now = datetime.now(UTC)
    warm = now - timedelta(days=settings.maintenance.hot_days + 5)  # past the hot window only
    expired = now - timedelta(days=settings.maintenance.retention_days + 5)  # past retention too
    fresh = now - timedelta(days=settings.maintenance.hot_days - 3)  # still hot
    await conn.execute(
        "SELECT partman.create_partition_time('public.orders', $1::timestamptz[])",
        [warm, expired, fresh],
    )
    for when in (warm, expired, fresh):
        assert await table_exists(conn, "public", day_name(when))
    warm_order = await insert_order(conn, warm)
    await insert_order(conn, fresh)

    report = await run_partition_maintenance(conn, settings)

    assert not report.skipped
    assert report.archived >= 2  # warm and expired (and any migration-made old ones)
    assert report.dropped >= 1
    assert await table_exists(conn, "public", day_name(fresh))
    assert not await table_exists(conn, "public", day_name(warm))
    assert not await table_exists(conn, "public", day_name(expired))
    assert await table_exists(conn, "archive", day_name(warm))
    assert not await table_exists(conn, "archive", day_name(expired))
    # The archived day keeps its data, detached from the live table.
    assert await conn.fetchval(f"SELECT count(*) FROM archive.{day_name(warm)}") == 1
    assert await conn.fetchval("SELECT count(*) FROM orders WHERE id = $1", warm_order) == 0

    again = await run_partition_maintenance(conn, settings)
    assert (again.created, again.archived, again.dropped) == (0, 0, 0)


async def test_retention_drops_only_archived_tables_past_retention(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    now = datetime.now(UTC)
    keep = day_name(now - timedelta(days=settings.maintenance.retention_days - 2))
    drop = day_name(now - timedelta(days=settings.maintenance.retention_days + 2))
    for name in (keep, drop, "orders_unrelated_note"):
        await conn.execute(f"CREATE TABLE IF NOT EXISTS archive.{name} (x int)")

    report = await run_partition_maintenance(conn, settings)

    assert report.dropped == 1
    assert await table_exists(conn, "archive", keep)
    assert await table_exists(conn, "archive", "orders_unrelated_note")
    assert not await table_exists(conn, "archive", drop)


async def test_concurrent_maintenance_runs_once(settings: Settings) -> None:
    first = await asyncpg.connect(settings.db.url)
    second = await asyncpg.connect(settings.db.url)
    try:
        await first.execute("SELECT pg_advisory_lock($1)", maintenance._LOCK_ID)
        report = await run_partition_maintenance(second, settings)
        assert report.skipped
        await first.execute("SELECT pg_advisory_unlock($1)", maintenance._LOCK_ID)
        assert not (await run_partition_maintenance(second, settings)).skipped
    finally:
        await first.close()
        await second.close()


async def test_prune_deletes_only_what_is_due(conn: asyncpg.Connection, settings: Settings) -> None:
    await conn.execute("TRUNCATE offer_redemptions, idempotency_keys, outbox")
    redemptions = {
        "due": "now() - interval '2 hours'",
        "in_grace": "now() - interval '30 minutes'",
        "live": "now() + interval '5 minutes'",
    }
    ids = {}
    for label, expires in redemptions.items():
        ids[label] = uuid.uuid4()
        await conn.execute(
            f"INSERT INTO offer_redemptions (offer_id, order_id, expires_at)"
            f" VALUES ($1, $2, {expires})",
            ids[label],
            uuid.uuid4(),
        )
    ttl = settings.maintenance.idempotency_ttl_seconds
    for key, age in (("old-1", ttl + 60), ("old-2", ttl + 1), ("young", ttl - 60)):
        await conn.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, created_at)"
            " VALUES ('orders:user-1', $1, '\\x00', now() - make_interval(secs => $2))",
            key,
            age,
        )
    keep = settings.maintenance.outbox_keep_seconds
    for label, published in (
        ("old-published", f"now() - make_interval(secs => {keep + 60})"),
        ("recent", f"now() - make_interval(secs => {keep - 60})"),
        ("unpublished", "NULL"),
    ):
        await conn.execute(
            "INSERT INTO outbox (event_type, order_id, user_id, order_version, payload,"
            f" created_at, published_at) VALUES ($1, $2, 'user-1', 1, '{{}}',"
            f" now() - interval '10 days', {published})",
            label,
            uuid.uuid4(),
        )

    report = await prune(conn, settings, batch_size=1)  # batch of one: exercises the loop

    assert (report.offer_redemptions, report.idempotency_keys, report.outbox) == (1, 2, 1)
    left = {r["offer_id"] for r in await conn.fetch("SELECT offer_id FROM offer_redemptions")}
    assert left == {ids["in_grace"], ids["live"]}
    assert [r["key"] for r in await conn.fetch("SELECT key FROM idempotency_keys")] == ["young"]
    events = {r["event_type"] for r in await conn.fetch("SELECT event_type FROM outbox")}
    assert events == {"recent", "unpublished"}

    nothing = await prune(conn, settings)
    assert (nothing.offer_redemptions, nothing.idempotency_keys, nothing.outbox) == (0, 0, 0)
