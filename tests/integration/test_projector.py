"""The projector against real Postgres and Redis.

Until the command API drives rides, ``WriteSide`` below plays the write side's part
of the outbox contract, exactly as the command API must keep it:

* every change to ``orders`` / ``user_summary`` and its ``outbox`` row are written in
  one transaction;
* ``outbox.event_type`` is the event's tag (order_started, order_finished,
  payment_settled), ``order_version`` the order's new version, and ``payload`` is
  ``shared.events.event_encoder.encode(event)``: the full order snapshot at that
  version plus the user's summary at its version when it changed;
* ``orders.created_at`` equals ``created_at_of(id)`` (the partition key);
* 'starting' and 'rejected' orders never produce events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
import httpx
import pytest
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis

from query_api import projection
from query_api.projector import MarkingTransaction, drain, drain_in, writes_for
from query_api.rebuild import rebuild
from shared.events import (
    Event,
    OrderFinished,
    OrderSnapshot,
    OrderStarted,
    PaymentSettled,
    UserSummarySnapshot,
    event_decoder,
    event_encoder,
)
from shared.ids import created_at_of, uuid7
from shared.lifecycle import ride_cost
from shared.settings import Settings
from shared.views import (
    OrderView,
    UserSummaryView,
    order_key,
    order_view_decoder,
    summary_view_decoder,
    user_orders_key,
    user_summary_key,
)
from tests.conftest import ROOT, start_process, stop_process, wait_http
from tests.ports import free_port

# the stored order's columns, from its Struct (ids as text, as the snapshot holds them)
_ORDER_COLUMNS = ", ".join(
    f"{name}::text AS {name}" if name in ("id", "offer_id") else name
    for name in OrderSnapshot.__struct_fields__
)
_SUMMARY_COLUMNS = "user_id, rides_count, total_charged, debt, last_payment_status, version"
_TRACK = json.dumps([{"t": i, "lat": 55.75 + i * 1e-5, "lon": 37.61} for i in range(300)])


Conn = asyncpg.Connection | PoolConnectionProxy


def _found(row: asyncpg.Record | None) -> asyncpg.Record:
    assert row is not None
    return row


def _snapshot(row: asyncpg.Record | None) -> OrderSnapshot:
    return OrderSnapshot(**dict(_found(row).items()))


class WriteSide:
    """The write side's outbox contract (see the module docstring), for tests."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def start(
        self,
        user_id: str,
        *,
        started_at: datetime | None = None,
        price_per_minute: int = 24,
        price_unlock: int = 45,
        status: str = "active",
    ) -> OrderSnapshot:
        order_id = uuid7(None if started_at is None else int(started_at.timestamp() * 1000))
        created_at = created_at_of(order_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""INSERT INTO orders (id, created_at, offer_id, user_id, scooter_id, zone_id,
                        price_per_minute, price_unlock, deposit, free_ride_seconds, status,
                        payment_status, started_at, pricing, version)
                    VALUES ($1, $2, $3, $4, 'scooter-1', 'zone-1', $5, $6, 300, 5, $7, $8,
                            $2, '{{}}', 1)
                    RETURNING {_ORDER_COLUMNS}""",
                order_id,
                created_at,
                uuid.uuid4(),
                user_id,
                price_per_minute,
                price_unlock,
                status,
                "held" if status == "active" else "holding",
            )
            if status != "active":
                return _snapshot(row)
            summary = await self._summary(
                conn, user_id, "active_rides = user_summary.active_rides + 1", None
            )
            order = _snapshot(row)
            await self._emit(conn, OrderStarted(order=order, summary=summary))
        return order

    async def finish(
        self, order: OrderSnapshot, *, at: datetime | None = None, distance_meters: int = 1_234
    ) -> OrderSnapshot:
        at = at or datetime.now(UTC)
        seconds = int((at - order.started_at).total_seconds())
        cancelled = seconds < order.free_ride_seconds
        total = ride_cost(
            seconds, order.price_per_minute, order.price_unlock, order.free_ride_seconds
        )
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE orders SET status = $3, payment_status = $4, finished_at = $5,
                        duration_seconds = $6, total_amount = $7, distance_meters = $8,
                        track = $9::jsonb, version = version + 1, updated_at = now()
                    WHERE id = $1 AND created_at = $2
                    RETURNING {_ORDER_COLUMNS}""",
                uuid.UUID(order.id),
                order.created_at,
                "cancelled" if cancelled else "finished",
                "charged" if cancelled else "pending",
                at,
                seconds,
                total,
                distance_meters,
                _TRACK,
            )
            summary = await self._summary(
                conn,
                order.user_id,
                "active_rides = user_summary.active_rides - 1,"
                " rides_count = user_summary.rides_count + 1",
                "pending",
            )
            finished = _snapshot(row)
            await self._emit(conn, OrderFinished(order=finished, summary=summary))
        return finished

    async def settle(self, order: OrderSnapshot, status: str = "charged") -> OrderSnapshot:
        amount = order.total_amount or 0
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE orders SET payment_status = $3, version = version + 1
                    WHERE id = $1 AND created_at = $2
                    RETURNING {_ORDER_COLUMNS}""",
                uuid.UUID(order.id),
                order.created_at,
                status,
            )
            change = (
                f"total_charged = user_summary.total_charged + {amount}"
                if status == "charged"
                else f"debt = user_summary.debt + {amount}"
            )
            summary = await self._summary(conn, order.user_id, change, status)
            settled = _snapshot(row)
            await self._emit(conn, PaymentSettled(order=settled, summary=summary))
        return settled

    @staticmethod
    async def _summary(
        conn: Conn, user_id: str, change: str, payment_status: str | None
    ) -> UserSummarySnapshot:
        await conn.execute(
            "INSERT INTO user_summary (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id
        )
        row = await conn.fetchrow(
            f"""UPDATE user_summary SET {change}, version = version + 1,
                    last_payment_status = coalesce($2, last_payment_status), updated_at = now()
                WHERE user_id = $1 RETURNING {_SUMMARY_COLUMNS}""",
            user_id,
            payment_status,
        )
        return UserSummarySnapshot(**dict(_found(row).items()))

    @staticmethod
    async def _emit(conn: Conn, event: Event) -> None:
        tag = {
            OrderStarted: "order_started",
            OrderFinished: "order_finished",
            PaymentSettled: "payment_settled",
        }[type(event)]
        await conn.execute(
            """INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
               VALUES ($1, $2, $3, $4, $5::jsonb)""",
            tag,
            uuid.UUID(event.order.id),
            event.order.user_id,
            event.order.version,
            event_encoder.encode(event).decode(),
        )


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def settings(base_settings: Settings, database: str) -> Settings:
    return base_settings.replace(
        read={"projector_metrics_port": 0},
        runtime={"log_level": "WARNING"},
    )


@pytest.fixture
def write(pool: asyncpg.Pool) -> WriteSide:
    return WriteSide(pool)


async def raw_view(redis: Redis, key: str) -> bytes | None:
    raw = await redis.hget(key, "d")
    return cast(bytes | None, raw)


async def maybe_order_view(redis: Redis, settings: Settings, order_id: str) -> OrderView | None:
    raw = await raw_view(redis, order_key(settings.redis.key_prefix, order_id))
    return None if raw is None else order_view_decoder.decode(raw)


async def order_view_in_redis(redis: Redis, settings: Settings, order_id: str) -> OrderView:
    view = await maybe_order_view(redis, settings, order_id)
    assert view is not None, f"no view of {order_id} in Redis"
    return view


async def summary_in_redis(redis: Redis, settings: Settings, user_id: str) -> UserSummaryView:
    raw = await raw_view(redis, user_summary_key(settings.redis.key_prefix, user_id))
    assert raw is not None, f"no summary of {user_id} in Redis"
    return summary_view_decoder.decode(raw)


async def recent_ids(redis: Redis, settings: Settings, user_id: str) -> list[str]:
    members = await redis.zrevrange(user_orders_key(settings.redis.key_prefix, user_id), 0, -1)
    return [m.decode() for m in cast(list[bytes], members)]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met in time")


async def unpublished(pool: asyncpg.Pool, order_ids: list[str]) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND order_id = ANY($1::uuid[])",
            order_ids,
        )
    )


# --- projections per event kind -----------------------------------------------------------


async def test_each_event_kind_is_projected(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    prefix = settings.redis.key_prefix
    user = new_user()
    started = await write.start(user, started_at=datetime.now(UTC) - timedelta(seconds=90))
    await drain(pool, redis, settings)

    view = await order_view_in_redis(redis, settings, started.id)
    assert (view.status, view.payment_status, view.version) == ("active", "held", 1)
    assert await redis.ttl(order_key(prefix, started.id)) == -1  # active: never expires
    assert await redis.zscore(user_orders_key(prefix, user), started.id) is not None
    summary = await summary_in_redis(redis, settings, user)
    assert (summary.version, summary.rides_count) == (1, 0)

    finished = await write.finish(started, distance_meters=4_321)
    await drain(pool, redis, settings)
    view = await order_view_in_redis(redis, settings, started.id)
    assert (view.status, view.payment_status, view.version) == ("finished", "pending", 2)
    assert view.total_amount == finished.total_amount == 90 * 24 // 60 + 45
    assert view.distance_meters == 4_321
    ttl = await redis.ttl(order_key(prefix, started.id))
    assert (
        settings.read.finished_view_ttl_seconds - 10
        < ttl
        <= settings.read.finished_view_ttl_seconds
    )
    raw = await raw_view(redis, order_key(prefix, started.id))
    assert raw is not None
    assert len(raw) < 1_000  # the raw track (~15 KB here) never reaches Redis

    await write.settle(finished)
    await drain(pool, redis, settings)
    view = await order_view_in_redis(redis, settings, started.id)
    assert (view.payment_status, view.version) == ("charged", 3)
    summary = await summary_in_redis(redis, settings, user)
    assert (summary.rides_count, summary.total_charged, summary.last_payment_status) == (
        1,
        finished.total_amount,
        "charged",
    )
    assert await unpublished(pool, [started.id]) == 0


async def test_replays_and_reordering_never_go_back_in_time(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    user = new_user()
    order = await _ride(write, user)
    await drain(pool, redis, settings)
    rows = await pool.fetch(
        "SELECT payload::text AS p FROM outbox WHERE order_id = $1 ORDER BY id", uuid.UUID(order.id)
    )
    events = [event_decoder.decode(r["p"]) for r in rows]
    assert [e.order.version for e in events] == [1, 2, 3]

    now = datetime.now(UTC)
    for batch in (events[::-1], events, events[::-1]):  # out of order, and twice more
        writes = [w for e in batch for w in writes_for(e, settings, now)]
        await projection.apply(redis, writes)
    # and a replay through the outbox itself: unmark the rows, project them again
    await pool.execute(
        "UPDATE outbox SET published_at = NULL WHERE order_id = $1", uuid.UUID(order.id)
    )
    await drain(pool, redis, settings)

    view = await order_view_in_redis(redis, settings, order.id)
    assert (view.version, view.status, view.payment_status) == (3, "finished", "charged")
    summary = await summary_in_redis(redis, settings, user)
    assert (summary.version, summary.rides_count) == (3, 1)
    assert await redis.zcard(user_orders_key(settings.redis.key_prefix, user)) == 1


async def test_recent_list_is_bounded(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    user = new_user()
    keep = settings.read.user_recent_orders
    base = datetime.now(UTC) - timedelta(hours=2)
    orders = [
        await write.start(user, started_at=base + timedelta(seconds=i)) for i in range(keep + 7)
    ]
    await drain(pool, redis, settings)
    assert await recent_ids(redis, settings, user) == [o.id for o in orders[::-1][:keep]]


async def test_rebuild_restores_flushed_projections(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    user = new_user()
    since = datetime.now(UTC) - timedelta(minutes=4)
    active = await write.start(user)
    done = await _ride(write, user)
    await drain(pool, redis, settings)
    prefix = settings.redis.key_prefix
    keys = [
        order_key(prefix, active.id),
        order_key(prefix, done.id),
        user_orders_key(prefix, user),
        user_summary_key(prefix, user),
    ]
    await redis.delete(*keys)

    count = await rebuild(pool, redis, settings, since=since)
    assert count >= 2
    assert (await order_view_in_redis(redis, settings, active.id)).version == 1
    assert (await order_view_in_redis(redis, settings, done.id)).version == 3
    assert await redis.ttl(order_key(prefix, active.id)) == -1
    assert await redis.ttl(order_key(prefix, done.id)) > 0
    assert set(await recent_ids(redis, settings, user)) == {"*", active.id, done.id}
    assert await redis.exists(user_summary_key(prefix, user))


# --- the projector process -------------------------------------------------------------------


async def test_killed_projector_catches_up_after_restart(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    proc = start_process("query_api.projector", settings)
    user = new_user()
    try:
        first = await write.start(user)
        await wait_until(lambda: _has_version(redis, settings, first.id, 1))
        # the view lands before its event is marked published: wait for both
        await wait_until(lambda: _all_published(pool, [first.id]))
    finally:
        proc.kill()  # no clean shutdown
        proc.wait()
    finished = await write.finish(first)
    second = await write.start(user)
    await asyncio.sleep(0.3)
    assert await unpublished(pool, [first.id, second.id]) == 2

    proc = start_process("query_api.projector", settings)
    try:
        await wait_until(lambda: _has_version(redis, settings, second.id, 1))
        await wait_until(lambda: _has_version(redis, settings, first.id, finished.version))
        await wait_until(lambda: _all_published(pool, [first.id, second.id]))
    finally:
        stop_process(proc)


async def test_projector_exits_cleanly_on_sigterm(settings: Settings) -> None:
    metrics = free_port()
    proc = start_process(
        "query_api.projector", settings.replace(read={"projector_metrics_port": metrics})
    )
    # past its imports (seconds on a busy machine) once /metrics answers; then running
    await asyncio.to_thread(wait_http, f"http://127.0.0.1:{metrics}/metrics", 60.0, proc)
    await asyncio.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_two_projectors_project_each_event_once(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    ports = [free_port(), free_port()]
    procs = [
        start_process(
            "query_api.projector",
            settings.replace(read={"projector_metrics_port": p, "projector_batch_size": 20}),
        )
        for p in ports
    ]
    try:
        orders = await asyncio.gather(*(_ride(write, new_user()) for _ in range(60)))
        ids = [o.id for o in orders]

        async def all_done() -> bool:
            return await unpublished(pool, ids) == 0

        await wait_until(all_done, timeout=30)
        for order in orders:
            view = await order_view_in_redis(redis, settings, order.id)
            assert (view.version, view.payment_status) == (3, "charged")
        counts = [_scrape(port, "projector_events_total") for port in ports]
        assert sum(counts) == 3 * len(orders), counts  # none twice, none lost
    finally:
        for proc in procs:
            stop_process(proc)


async def test_projection_lag_under_light_load(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    """~100 events/s for 3 s; lag = outbox commit → published_at (after Redis wrote)."""
    await drain(pool, redis, settings)
    metrics = free_port()
    proc = start_process(
        "query_api.projector", settings.replace(read={"projector_metrics_port": metrics})
    )
    try:
        # past its imports (seconds on a busy machine) once /metrics answers; then polling
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{metrics}/metrics", 60.0, proc)
        await asyncio.sleep(1.0)
        ids = []
        for _ in range(300):
            ids.append((await write.start(new_user())).id)
            await asyncio.sleep(0.01)

        async def all_done() -> bool:
            return await unpublished(pool, ids) == 0

        await wait_until(all_done, timeout=30)
        lags = sorted(
            await pool.fetchval(
                """SELECT array_agg(extract(epoch FROM published_at - created_at)::float8)
                 FROM outbox WHERE order_id = ANY($1::uuid[])""",
                ids,
            )
        )
    finally:
        stop_process(proc)
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99) - 1]
    print(
        f"projection lag over {len(lags)} events: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )
    assert p99 < 1.0


async def _ride(write: WriteSide, user: str) -> OrderSnapshot:
    order = await write.start(user, started_at=datetime.now(UTC) - timedelta(minutes=3))
    return await write.settle(await write.finish(order))


async def _all_published(pool: asyncpg.Pool, order_ids: list[str]) -> bool:
    return await unpublished(pool, order_ids) == 0


async def _has_version(redis: Redis, settings: Settings, order_id: str, version: int) -> bool:
    view = await maybe_order_view(redis, settings, order_id)
    return view is not None and view.version >= version


def _scrape(port: int, metric: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(metric + " "):
            return float(line.split()[1])
    raise AssertionError(f"{metric} not exported on :{port}")


async def test_redis_down_is_one_log_line_per_interval_not_per_attempt(
    settings: Settings, pool: asyncpg.Pool, write: WriteSide
) -> None:
    metrics = free_port()
    down = settings.replace(
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"},  # nobody listens there
        read={"projector_metrics_port": metrics},
    )
    order = await write.start(new_user())
    env = {**os.environ, **down.to_env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "query_api.projector"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        async def retried_a_few_times() -> bool:
            try:
                return _scrape(metrics, "projector_errors_total") >= 5
            except (httpx.HTTPError, AssertionError):
                return False

        await wait_until(retried_a_few_times, timeout=30)
    finally:
        proc.terminate()
        output, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    lines = output.decode().splitlines()
    failed = [line for line in lines if "projection failed" in line]
    assert len(failed) == 1, lines
    assert "cannot reach Redis at 127.0.0.1" in failed[0]
    assert not any("Traceback" in line for line in lines), lines
    assert await unpublished(pool, [order.id]) == 1  # nothing lost: projected once Redis is back


# --- marks committed together (ADR 0016) -----------------------------------------------------


async def _claimable(pool: asyncpg.Pool, order_ids: list[str]) -> int:
    """Rows of these orders another projector could claim now (unpublished, not locked)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT id FROM outbox WHERE published_at IS NULL AND order_id = ANY($1::uuid[])
               FOR UPDATE SKIP LOCKED""",
            order_ids,
        )
    return len(rows)


async def test_open_marks_hide_claimed_rows_until_commit_and_replay_if_abandoned(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    marks = MarkingTransaction(pool, commit_seconds=60.0)
    order = await _ride(write, new_user())
    ids = [order.id]
    try:
        assert await drain_in(await marks.connection(), redis, settings) == 3
        marks.marked += 3
        # in Redis already; not yet published for anyone else, and no one else can claim it
        assert (await order_view_in_redis(redis, settings, order.id)).version == 3
        assert await unpublished(pool, ids) == 3
        assert await _claimable(pool, ids) == 0
        assert await drain(pool, redis, settings) == 0  # a second projector skips them
        await marks.settle()  # not due: stays open
        assert marks.due_in() is not None
    finally:
        await marks.abandon()  # as an error or a crash would: nothing committed
    assert await unpublished(pool, ids) == 3
    assert await _claimable(pool, ids) == 3
    await redis.delete(order_key(settings.redis.key_prefix, order.id))
    assert await drain(pool, redis, settings) == 3  # projected again, nothing lost
    assert (await order_view_in_redis(redis, settings, order.id)).version == 3
    assert await unpublished(pool, ids) == 0


async def test_marks_commit_once_due(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    marks = MarkingTransaction(pool, commit_seconds=0.2)
    first = await write.start(new_user())
    try:
        marks.marked += await drain_in(await marks.connection(), redis, settings)
        await marks.settle()
        assert await unpublished(pool, [first.id]) == 1
        second = await write.start(new_user())  # a later wake-up joins the open transaction
        marks.marked += await drain_in(await marks.connection(), redis, settings)
        await asyncio.sleep(0.25)
        await marks.settle()  # due: one commit covers both wake-ups
        assert marks.due_in() is None
        assert await unpublished(pool, [first.id, second.id]) == 0
        # a wake-up that marks nothing does not keep a transaction open
        await drain_in(await marks.connection(), redis, settings)
        await marks.settle()
        assert marks.due_in() is None
    finally:
        await marks.abandon()


async def test_projector_killed_with_marks_uncommitted_projects_them_again(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    slow = settings.replace(read={"projector_commit_interval_seconds": 600.0})
    proc = start_process("query_api.projector", slow)
    user = new_user()
    try:
        order = await _ride(write, user)
        await wait_until(lambda: _has_version(redis, settings, order.id, 3))
        await asyncio.sleep(0.3)
        assert await unpublished(pool, [order.id]) == 3  # projected, marks not committed
        assert await _claimable(pool, [order.id]) == 0  # and held by the projector
    finally:
        proc.kill()  # no clean shutdown: the open transaction is rolled back
        proc.wait()

    async def released() -> bool:  # the server notices the dead connection
        return await _claimable(pool, [order.id]) == 3

    await wait_until(released)
    await redis.delete(
        order_key(settings.redis.key_prefix, order.id),
        user_orders_key(settings.redis.key_prefix, user),
        user_summary_key(settings.redis.key_prefix, user),
    )
    proc = start_process("query_api.projector", settings)
    try:
        await wait_until(lambda: _all_published(pool, [order.id]))
        view = await order_view_in_redis(redis, settings, order.id)
        assert (view.version, view.status, view.payment_status) == (3, "finished", "charged")
        assert (await summary_in_redis(redis, settings, user)).rides_count == 1
        assert await recent_ids(redis, settings, user) == [order.id]
    finally:
        stop_process(proc)


async def test_sigterm_commits_the_open_marks(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    slow = settings.replace(read={"projector_commit_interval_seconds": 600.0})
    proc = start_process("query_api.projector", slow)
    try:
        order = await write.start(new_user())
        await wait_until(lambda: _has_version(redis, settings, order.id, 1))
        assert await unpublished(pool, [order.id]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    assert await unpublished(pool, [order.id]) == 0


async def test_three_projectors_with_open_marks_project_each_event_once(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    await drain(pool, redis, settings)
    ports = [free_port(), free_port(), free_port()]
    procs = [
        start_process(
            "query_api.projector",
            settings.replace(
                read={
                    "projector_metrics_port": p,
                    "projector_batch_size": 7,
                    "projector_commit_interval_seconds": 0.5,
                }
            ),
        )
        for p in ports
    ]
    try:
        for p, proc in zip(ports, procs, strict=True):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{p}/metrics", 60.0, proc)
        orders = await asyncio.gather(*(_ride(write, new_user()) for _ in range(60)))
        ids = [o.id for o in orders]

        async def all_done() -> bool:
            return await unpublished(pool, ids) == 0

        await wait_until(all_done, timeout=30)
        for order in orders:
            view = await order_view_in_redis(redis, settings, order.id)
            assert (view.version, view.payment_status) == (3, "charged")
        counts = [_scrape(port, "projector_events_total") for port in ports]
        assert sum(counts) == 3 * len(orders), counts  # none twice, none skipped
    finally:
        for proc in procs:
            stop_process(proc)


async def test_polling_projects_the_first_event_and_a_burst_without_notify(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    """ADR 0027: nothing NOTIFYs any more (0013 dropped the trigger); an idle projector
    finds the first event by its poll (50 ms) within 1 s, and a burst is all projected,
    each event once."""
    triggers = await pool.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'outbox'::regclass AND NOT tgisinternal"
    )
    assert triggers == 0
    await drain(pool, redis, settings)
    metrics = free_port()
    proc = start_process(
        "query_api.projector", settings.replace(read={"projector_metrics_port": metrics})
    )
    try:
        # past its imports (seconds on a busy machine) once /metrics answers; then idle
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{metrics}/metrics", 60.0, proc)
        await asyncio.sleep(0.5)
        first = await write.start(new_user())
        await wait_until(lambda: _all_published(pool, [first.id]), timeout=10)
        lag = await pool.fetchval(
            "SELECT extract(epoch FROM published_at - created_at)::float8 FROM outbox"
            " WHERE order_id = $1",
            uuid.UUID(first.id),
        )
        assert lag < 1.0, f"first event projected {lag:.3f} s after its commit"
        await order_view_in_redis(redis, settings, first.id)

        burst = await asyncio.gather(*(write.start(new_user()) for _ in range(200)))
        ids = [o.id for o in burst]
        await wait_until(lambda: _all_published(pool, ids), timeout=30)
        for order in burst:
            assert (await order_view_in_redis(redis, settings, order.id)).version == 1
        assert _scrape(metrics, "projector_events_total") == 1 + len(burst)  # none lost, none twice
    finally:
        stop_process(proc)
