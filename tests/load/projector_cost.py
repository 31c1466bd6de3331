"""``python -m tests.load.projector_cost``: CPU per event of the projector alone, and its
lag, at fixed event rates (issue 13).

Starts only the projector (own database and key prefix, as the load tests), then writes
outbox events as the ride steps do (one transaction per event; before ADR 0027 each NOTIFYed) at
``--rate`` events per second for ``--duration`` seconds: a started, finished and settled
event per ride, in turn. Prints the projector's CPU-ms per event (from /proc, so a busy
machine disturbs it less than a throughput run) and the projection lag (``published_at -
created_at`` of every event, p50/p99/max), read from the outbox itself; the CPU of the
run database's Postgres backends that outlive a rate's writing (the projector's own: the
generator's, counter's and lag reader's connections are closed by then); and the
projector's transactions per event (``pg_stat_database`` commits of the run's database
less the generator's own, and its rollbacks): its cost falls as its batches grow.

Compare settings with their ``SCOOTERS_*`` variables, or two checkouts; a ride
flow writes three events, so three times the flows/s is the rate of a load test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec

from shared.domain import Order
from shared.events import (
    Event,
    OrderFinished,
    OrderStarted,
    PaymentSettled,
    UserSummarySnapshot,
    event_encoder,
)
from shared.ids import uuid7
from shared.infra.db import create_pool
from shared.lifecycle import OrderStatus, PaymentStatus
from tests.load.bench import bench_settings, running_stack
from tests.load.commits import _backends_cpu
from tests.load.harness import _stat

_INSERT = """INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
VALUES ($1, $2, $3, $4, $5::jsonb)"""
_LAG = """
SELECT count(*) AS n,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY published_at - created_at) AS p50,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY published_at - created_at) AS p99,
       max(published_at - created_at) AS worst,
       count(*) FILTER (WHERE published_at IS NULL) AS unpublished
FROM outbox
"""


def events_of_ride(n: int) -> list[tuple[str, Event]]:
    """The three events of one ride (snapshots as the ride steps write them)."""
    now = datetime.now(UTC)
    order = Order(
        id=str(uuid7()),  # the partition key is its time (receipts read it)
        offer_id=str(uuid7()),  # the partition key is its time (receipts read it)
        user_id=f"user-{n}",
        scooter_id=f"scooter-{n}",
        zone_id="zone-1",
        status=OrderStatus.ACTIVE,
        payment_status=PaymentStatus.HELD,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        created_at=now,
        started_at=now,
        free_ride_seconds=5,
        version=2,
    )
    summary = UserSummarySnapshot(
        user_id=order.user_id,
        rides_count=1,
        total_charged=0,
        debt=0,
        last_payment_status=None,
        version=n,
    )
    ended = msgspec_replace(
        order,
        status=OrderStatus.FINISHED,
        payment_status=PaymentStatus.PENDING,
        finished_at=now,
        duration_seconds=60,
        total_amount=69,
        distance_meters=1_000,
        version=3,
    )
    settled = msgspec_replace(ended, payment_status=PaymentStatus.CHARGED, version=4)
    return [
        ("order_started", OrderStarted(order=order, summary=summary)),
        ("order_finished", OrderFinished(order=ended)),
        ("payment_settled", PaymentSettled(order=settled, summary=summary)),
    ]


def msgspec_replace(order: Order, **changes: object) -> Order:
    return msgspec.structs.replace(order, **changes)


async def write_events(dsn: str, rate: float, duration: float) -> int:
    """Events at ``rate`` per second, each in its own transaction; returns how many."""
    # the services' pool: no reset query on release, so one transaction per event
    pool = await create_pool(dsn, min_size=4, max_size=8, connect_timeout=10.0)
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    tasks: set[asyncio.Task[None]] = set()

    async def write(tag: str, event: Event) -> None:
        await pool.execute(
            _INSERT,
            tag,
            uuid.UUID(event.order.id),
            event.order.user_id,
            event.order.version,
            event_encoder.encode(event).decode(),
        )

    started = loop.time()
    queue: list[tuple[str, Event]] = []
    for i in range(total):
        if not queue:
            queue = events_of_ride(i)[::-1]
        delay = started + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(write(*queue.pop()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    await pool.close()
    return total


async def lag(dsn: str) -> dict[str, float]:
    """Projection lag of every event in the outbox, once all are published."""
    conn = await asyncpg.connect(dsn)
    queries = 0
    try:
        for _ in range(600):  # until the projector has caught up
            queries += 1
            found = await conn.fetchrow(_LAG)
            assert found is not None
            row = found
            if row["unpublished"] == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return {
        "events": row["n"],
        "p50_ms": round(row["p50"].total_seconds() * 1000, 1),
        "p99_ms": round(row["p99"].total_seconds() * 1000, 1),
        "max_ms": round(row["worst"].total_seconds() * 1000, 1),
        "unpublished": row["unpublished"],
        "queries": queries,  # each a commit
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.projector_cost")
    parser.add_argument("--rate", type=float, action="append", help="events/s (repeatable)")
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args(argv)
    settings = bench_settings(1, 1)
    with running_stack(settings, ("projector",)) as bench:
        pid = bench.pids["projector"]
        database = settings.db.url.rsplit("/", 1)[1]
        asyncio.run(write_events(settings.db.url, 20.0, 2.0))  # warm-up: until it projects
        asyncio.run(lag(settings.db.url))
        asyncio.run(_clear(settings.db.url))
        # transactions nobody here asked for (autovacuum visiting a fresh database's many
        # partitions, several a second): measured idle, then taken off each rate's count
        time.sleep(11)
        idle, _ = asyncio.run(_commits(settings.db.url))
        idle_started = time.monotonic()
        time.sleep(5.0)
        idle_after, _ = asyncio.run(_commits(settings.db.url))
        background = (idle_after - idle - 1) / (time.monotonic() - idle_started)
        print(f"background: {background:.1f} commits/s while idle")
        for rate in args.rate or [300.0]:
            time.sleep(1.2)
            commits, rollbacks = asyncio.run(_commits(settings.db.url))
            window = time.monotonic()
            before, pg_before = _stat(pid), _backends_cpu(database)
            started = time.monotonic()
            count = asyncio.run(write_events(settings.db.url, rate, args.duration))
            found = asyncio.run(lag(settings.db.url))
            time.sleep(0.3)  # the closed connections' backends exit; an open commit is due
            after, pg_after = _stat(pid), _backends_cpu(database)
            # the projector's transactions: all commits less one per event written, the
            # counter's read, the lag queries and the background's share of the window
            # (an idle backend's last counts reach the statistics within 10 s)
            time.sleep(11)
            commits_after, rollbacks_after = asyncio.run(_commits(settings.db.url))
            window = time.monotonic() - window
            commits = commits_after - commits - count - 1 - int(found.pop("queries"))
            commits -= round(background * window)
            rollbacks = rollbacks_after - rollbacks  # a wake-up that marked nothing (ADR 0016)
            assert before is not None
            assert after is not None
            cpu = after[1] - before[1]
            seconds = time.monotonic() - started
            asyncio.run(_clear(settings.db.url))
            print(
                f"rate {rate:.0f}/s: {count} events in {seconds:.1f} s, projector "
                f"{cpu * 1000 / count:.3f} CPU-ms per event ({cpu / seconds:.3f} cores), "
                f"its Postgres backends {(pg_after - pg_before) * 1000 / count:.3f} CPU-ms "
                "per event, "
                f"{commits / count:.2f} projector commits and {rollbacks / count:.2f} rollbacks "
                f"per event ({commits} in {window:.0f} s), lag {found}"
            )


async def _commits(dsn: str) -> tuple[int, int]:
    """This database's committed and rolled-back transactions so far."""
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    assert found is not None
    return int(found["xact_commit"]), int(found["xact_rollback"])


async def _clear(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM outbox")
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
