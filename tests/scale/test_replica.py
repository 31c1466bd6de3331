"""A lagging replica never makes a screen go back in time (ADR 0007).

The replica's replay is paused (``pg_wal_replay_pause()``): it still receives WAL but
applies none, so it shows the world as it was. No projector runs here and each read
first deletes the view from the cluster, so every read is a fallback read and goes
through the read router.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.asyncio import RedisCluster

from query_api import repository
from query_api.reads import Reads
from query_api.replica import ReadRouter, primary_gone
from query_api.stores import connect_postgres, connect_redis
from shared.errors import DependencyUnavailable
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


async def replica_answers(
    query: Client, redis: RedisCluster, prefix: str, order_id: str, shown: tuple[str, int]
) -> None:
    """A fallback read of the screen is routed to the replica, within 10 s, and every read
    until then shows ``shown`` (status, version). The replica may be a few WAL records
    behind when a read begins even once it has replayed all a test wrote: the primary
    writes on its own (a standby snapshot, a checkpoint), and on a loaded box replaying
    that can take longer than ``replica_max_wait_seconds``, so that one read goes to the
    primary (ADR 0007)."""

    async def on_replica() -> bool:
        before = routed("replica")
        body = await fresh_screen(query, redis, prefix, order_id)
        assert (body["status"], body["version"]) == shown
        return routed("replica") > before

    await eventually(on_replica, timeout=10)


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
    await replica_answers(query, redis, prefix, order["id"], ("active", order["version"]))

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
    await replica_answers(query, redis, prefix, order["id"], ("finished", done["version"]))
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
    # the read must be routed to the replica: on a loaded box replaying the primary's own
    # records (a standby snapshot) may take longer than the default 0.05 s wait
    settings = read_settings.replace(db={"replica_max_wait_seconds": 2.0})
    redis = connect_redis(settings)
    primary = await connect_postgres(settings, max_size=2)
    replica = await connect_postgres(settings, max_size=2, replica=True)
    assert replica is not None
    reads = Reads(settings, redis, primary, replica)
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


# --- a busy primary is not a down one (ADR 0015) -----------------------------------------------


def checks(outcome: str) -> float:
    return REGISTRY.get_sample_value("query_replica_checks_total", {"outcome": outcome}) or 0.0


async def take_every_connection(
    pool: asyncpg.Pool, size: int, seconds: float, observer: asyncpg.Pool
) -> list[asyncio.Task[Any]]:
    """Keep all ``size`` connections of ``pool`` busy for ``seconds`` (``pg_sleep`` on
    the primary), as the primary's pool is under overload; returns once all sleep
    (seen through ``observer``, another pool to the same primary)."""
    tag = uuid.uuid4().hex
    held = [
        asyncio.create_task(pool.fetchval(f"SELECT pg_sleep({seconds}) /* {tag} */"))
        for _ in range(size)
    ]

    async def all_asleep() -> bool:
        running = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
            f"%pg_sleep({seconds}) /* {tag} */%",
        )
        return int(running) == size

    await eventually(all_asleep, timeout=5, interval=0.02)
    return held


async def test_a_busy_primary_is_read_not_the_replica_behind_it(
    api: Client,
    db: asyncpg.Pool,
    pg_pair: PostgresPair,
    read_settings: Settings,
    ids: Ids,
) -> None:
    """The primary check waits past its timeout for a connection of the primary's pool
    (all taken, as under overload). Before ADR 0015 that counted as the primary being
    down and the read went to the replica "as it is": here the replica's replay is
    paused with the ride still active, so the screen went back from the finish already
    shown to the active ride. Now the busy primary answers, within its deadline, and
    past the deadline the read is a 503 (``dependency_unavailable``), never the past."""
    order = await start(api, ids.rider(), ids.scooter())
    await eventually(lambda: asyncio.to_thread(pg_pair.caught_up), timeout=10)
    redis = connect_redis(read_settings)
    primary = await connect_postgres(read_settings, max_size=2)
    replica = await connect_postgres(read_settings, max_size=2, replica=True)
    assert replica is not None
    reads = Reads(read_settings, redis, primary, replica)
    reads.router = ReadRouter(
        primary, replica, check_timeout_seconds=0.2, primary_deadline_seconds=3.0
    )
    order_id = uuid.UUID(order["id"])
    pg_pair.pause_replay()
    try:
        await backdate(db, order["id"], 90)
        done = await finish(api, order["id"])
        assert await replica_status(replica, order["id"]) == "active"  # behind
        shown = await reads.order_from_postgres(order_id)  # the replica is behind: primary
        assert shown is not None
        assert (shown.status, shown.version) == ("finished", done["version"])

        busy, down = checks("primary_busy"), checks("primary_down")
        held = await take_every_connection(primary, 2, 1.0, db)
        began = time.monotonic()
        again = await reads.order_from_postgres(order_id)
        waited = time.monotonic() - began
        await asyncio.gather(*held)
        assert again is not None
        assert (again.status, again.version) == ("finished", done["version"])  # not the past
        assert checks("primary_busy") == busy + 1
        assert checks("primary_down") == down
        assert waited >= 0.5  # it waited for the primary (a connection freed after ~1 s)

        # a primary busy past the read's deadline: 503, not the replica's older answer
        reads.router = ReadRouter(
            primary, replica, check_timeout_seconds=0.2, primary_deadline_seconds=0.3
        )
        held = await take_every_connection(primary, 2, 1.5, db)
        with pytest.raises(DependencyUnavailable):
            await reads.order_from_postgres(order_id)
        await asyncio.gather(*held)
        assert checks("primary_busy") == busy + 2
    finally:
        pg_pair.resume_replay()
        await redis.aclose()
        await primary.close()
        await replica.close()


async def test_a_primary_that_is_down_still_leaves_the_replica_to_answer(
    api: Client, pg_pair: PostgresPair, read_settings: Settings, ids: Ids
) -> None:
    """ADR 0007's rule for a primary that is down, unchanged: nothing listens where the
    primary was (connection refused), so the replica answers as it is."""
    order = await start(api, ids.rider(), ids.scooter())
    await eventually(lambda: asyncio.to_thread(pg_pair.caught_up), timeout=10)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    name = read_settings.db.url.rsplit("/", 1)[1]
    gone = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{dead_port}/{name}", min_size=0, max_size=1
    )
    replica = await connect_postgres(read_settings, max_size=2, replica=True)
    assert replica is not None
    router = ReadRouter(gone, replica, check_timeout_seconds=0.5)
    try:
        down, busy, on_replica = checks("primary_down"), checks("primary_busy"), routed("replica")
        view = await router.read(lambda pool: repository.order_by_id(pool, uuid.UUID(order["id"])))
        assert view is not None
        assert (view.status, view.version) == ("active", order["version"])
        assert checks("primary_down") == down + 1
        assert checks("primary_busy") == busy
        assert routed("replica") == on_replica + 1
    finally:
        await gone.close()
        await replica.close()


@pytest.mark.parametrize(
    ("error", "gone"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError(104, "reset"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), True),
        (asyncpg.exceptions.AdminShutdownError("shutting down"), True),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
        (TimeoutError(), False),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), False),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), False),
    ],
)
def test_only_a_lost_connection_counts_as_the_primary_down(
    error: BaseException, gone: bool
) -> None:
    assert primary_gone(error) is gone
