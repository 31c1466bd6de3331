"""A lagging replica never makes a screen go back in time (ADR 0007).

The replica's replay is paused (``pg_wal_replay_pause()``): it still receives WAL but
applies none, so it shows the world as it was. No projector runs here and each read
first deletes the view from the cluster, so every read is a fallback read and goes
through the read router.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.asyncio import RedisCluster

from query_api.reads import Reads
from query_api.stores import connect_postgres, connect_redis
from shared.settings import Settings
from shared.views import order_key, user_summary_key
from tests.e2e.conftest import Ids, backdate, eventually, order_row, start
from tests.e2e.test_read_side import finish, screen
from tests.engines import PostgresPair

Client = AsyncTestClient[Any]


def routed(pool: str) -> float:
    return REGISTRY.get_sample_value("query_replica_reads_total", {"pool": pool}) or 0.0


async def fresh_screen(query: Client, redis: RedisCluster, prefix: str, order_id: str) -> Any:
    """The screen read from Postgres: the cached view is deleted first."""
    await redis.delete(order_key(prefix, order_id))
    return await screen(query, order_id)


async def replica_status(replica_db: asyncpg.Pool, order_id: str) -> str | None:
    row = await replica_db.fetchrow(
        "SELECT status FROM orders WHERE id = $1::uuid", order_id
    )  # a test-only lookup, partitions unpruned
    return None if row is None else str(row["status"])


async def test_paused_replica_is_not_read_and_screens_never_go_back(
    api: Client,
    query: Client,
    db: asyncpg.Pool,
    replica_db: asyncpg.Pool,
    redis: RedisCluster,
    prefix: str,
    pg_pair: PostgresPair,
    read_settings: Settings,
    ids: Ids,
) -> None:
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    await eventually(lambda: asyncio.to_thread(pg_pair.caught_up), timeout=10)

    # current replica: fallback reads go to it
    before = routed("replica")
    active = await fresh_screen(query, redis, prefix, order["id"])
    assert (active["status"], active["version"]) == ("active", order["version"])
    assert routed("replica") > before

    pg_pair.pause_replay()
    try:
        await backdate(db, order["id"], 90)
        done = await finish(api, order["id"])
        newer = await start(api, ids.rider(), ids.scooter())  # created while paused
        # the replica really is behind: it still has the ride active, the new one not at all
        assert await replica_status(replica_db, order["id"]) == "active"
        assert await replica_status(replica_db, newer["id"]) is None

        on_primary = routed("primary")
        for _ in range(3):
            body = await fresh_screen(query, redis, prefix, order["id"])
            assert (body["status"], body["version"]) == ("finished", done["version"])
            assert body["total_amount"] == done["total_amount"]
            shown_new = await fresh_screen(query, redis, prefix, newer["id"])
            assert (shown_new["status"], shown_new["version"]) == ("active", newer["version"])
        # the history and the summary are read from the primary as well
        await redis.delete(user_summary_key(prefix, rider))
        summary = (await query.get(f"/users/{rider}/summary")).json()
        stored = await db.fetchrow("SELECT * FROM user_summary WHERE user_id = $1", rider)
        assert stored is not None
        assert summary["version"] == stored["version"]
        assert summary["rides_count"] == 1
        listed = (await query.get(f"/users/{rider}/orders")).json()["items"]
        assert [(o["id"], o["status"]) for o in listed] == [(order["id"], "finished")]
        assert routed("primary") >= on_primary + 7
    finally:
        pg_pair.resume_replay()

    # replay resumed: once the replica has caught up it answers again, the same screens
    await eventually(lambda: asyncio.to_thread(pg_pair.caught_up), timeout=10)
    assert await replica_status(replica_db, order["id"]) == "finished"
    before = routed("replica")
    body = await fresh_screen(query, redis, prefix, order["id"])
    assert (body["status"], body["version"]) == ("finished", done["version"])
    assert routed("replica") > before
    assert (await order_row(db, order["id"]))["version"] == done["version"]
    assert read_settings.db.replica_url


async def test_screens_are_current_while_writes_go_on(
    api: Client,
    query: Client,
    redis: RedisCluster,
    prefix: str,
    pg_pair: PostgresPair,
    ids: Ids,
) -> None:
    """Under a trickle of writes the replica is always a little behind: each read waits
    for it (up to ``replica_max_wait_seconds``) or reads the primary, never older."""
    orders = [await start(api, ids.rider(), ids.scooter()) for _ in range(5)]
    before_replica, before_primary = routed("replica"), routed("primary")
    for order in orders:
        writer = asyncio.create_task(start(api, ids.rider(), ids.scooter()))
        body = await fresh_screen(query, redis, prefix, order["id"])
        assert body["version"] == order["version"]
        await writer
    on_replica, on_primary = routed("replica") - before_replica, routed("primary") - before_primary
    print(
        f"\nreads under writes: {on_replica:.0f} from the replica,"
        f" {on_primary:.0f} from the primary"
    )
    assert on_replica + on_primary == len(orders)


async def test_a_replica_read_cancelled_by_recovery_is_answered_by_the_primary(
    db: asyncpg.Pool, pg_pair: PostgresPair, read_settings: Settings
) -> None:
    """A hot standby cancels a query that holds a lock the replay of the primary's WAL
    needs ("canceling statement due to conflict with recovery", SQLSTATE 40001): at once
    here (``max_standby_streaming_delay = 0``), after that delay (30 s) or at once when
    replay is already that far behind in production. The read is answered by the primary
    instead of a 500."""
    await db.execute("CREATE TABLE recovery_probe (n int); INSERT INTO recovery_probe VALUES (1)")
    redis = connect_redis(read_settings)
    primary = await connect_postgres(read_settings, max_size=2)
    replica = await connect_postgres(read_settings, max_size=2, replica=True)
    assert replica is not None
    reads = Reads(read_settings, redis, primary, replica)
    pg_pair.set_replica("max_standby_streaming_delay", "0")
    try:
        await eventually(lambda: asyncio.to_thread(pg_pair.caught_up), timeout=10)
        failed, on_replica = replica_read_failures(), routed("replica")

        async def slow_read(pool: asyncpg.Pool) -> int:
            return int(await pool.fetchval("SELECT n FROM recovery_probe, pg_sleep(1.5)"))

        # the read holds its lock on the replica when the primary's exclusive lock on the
        # same table is replayed there
        read = asyncio.create_task(reads._query(slow_read))
        await eventually(lambda: replica_query_running(replica), timeout=5, interval=0.02)
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE recovery_probe IN ACCESS EXCLUSIVE MODE")
        assert await read == 1
        assert routed("replica") == on_replica + 1  # the replica was chosen
        assert replica_read_failures() == failed + 1  # and failed; the primary answered
    finally:
        pg_pair.set_replica("max_standby_streaming_delay", None)
        await db.execute("DROP TABLE recovery_probe")
        await redis.aclose()
        await primary.close()
        await replica.close()


def replica_read_failures() -> float:
    return REGISTRY.get_sample_value("query_replica_read_failures_total") or 0.0


async def replica_query_running(replica: asyncpg.Pool) -> bool:
    running = await replica.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM recovery_probe, pg_sleep%'"
        " AND state = 'active' AND pid <> pg_backend_pid()"
    )
    return bool(running)
