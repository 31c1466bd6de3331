"""The projector's deferred marks (ADR 0023): the rows of its wake-ups are marked
together just before its transaction commits, each with the time Redis had its writes;
until then they stay locked (other projectors skip them) and its own later claims skip
them too; an error rolls them back and they are projected again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from query_api.projector import MarkingTransaction, drain, drain_in
from shared.events import event_encoder
from shared.settings import Settings
from shared.views import order_key, order_view_decoder
from tests.load.projector_cost import _INSERT, events_of_ride


@pytest.fixture
async def clean(pool: asyncpg.Pool, redis: Redis, settings: Settings) -> None:
    await drain(pool, redis, settings)  # nothing left over from other tests


async def _write_rides(pool: asyncpg.Pool, rides: int) -> list[str]:
    """``rides`` rides' three events each, one transaction per event; their order ids."""
    ids = []
    for n in range(rides):
        events = events_of_ride(n)
        ids.append(events[0][1].order.id)
        for tag, event in events:
            await pool.execute(
                _INSERT,
                tag,
                uuid.UUID(event.order.id),
                event.order.user_id,
                event.order.version,
                event_encoder.encode(event).decode(),
            )
    return ids


async def _published(pool: asyncpg.Pool, order_ids: list[str]) -> list[datetime | None]:
    rows = await pool.fetch(
        "SELECT published_at FROM outbox WHERE order_id = ANY($1::uuid[]) ORDER BY id",
        [uuid.UUID(i) for i in order_ids],
    )
    return [row["published_at"] for row in rows]


async def test_marks_wait_for_the_commit_with_the_time_redis_had_the_writes(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, clean: None
) -> None:
    marks = MarkingTransaction(pool, commit_seconds=60.0)
    first = await _write_rides(pool, 1)
    try:
        conn = await marks.connection()
        before = datetime.now(UTC)
        marks.marked += await drain_in(conn, redis, settings, None, marks)
        assert len(marks.unmarked) == 3
        second = await _write_rides(pool, 1)  # a later wake-up in the same transaction
        count = await drain_in(conn, redis, settings, None, marks)
        assert count == 3  # the first ride's rows are not claimed twice
        marks.marked += count
        projected = datetime.now(UTC)
        view = await redis.hget(order_key(settings.redis.key_prefix, second[0]), "d")
        assert isinstance(view, bytes)
        assert order_view_decoder.decode(view).version == 4
        assert await _published(pool, first + second) == [None] * 6  # not written yet
        assert await drain(pool, redis, settings) == 0  # held: another projector skips them
        await marks.end()
    finally:
        await marks.abandon()
    stamps = await _published(pool, first + second)
    assert all(s is not None and before <= s <= projected for s in stamps), stamps
    assert marks.unmarked == []


async def test_marks_are_written_once_a_batch_is_waiting(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, clean: None
) -> None:
    small = settings.replace(read={"projector_batch_size": 4})
    marks = MarkingTransaction(pool, commit_seconds=60.0)
    ids = await _write_rides(pool, 3)  # 9 events: batches of 4, 4, 1
    try:
        conn = await marks.connection()
        assert await drain_in(conn, redis, small, None, marks) == 9
        marks.marked += 9
        assert len(marks.unmarked) == 1  # the full batches' marks went in as they filled
        async with pool.acquire() as other:  # not visible before the commit
            assert (
                await other.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
                    " AND order_id = ANY($1::uuid[])",
                    [uuid.UUID(i) for i in ids],
                )
                == 0
            )
    finally:
        await marks.abandon()  # as an error would: nothing published, all projected again
    assert await _published(pool, ids) == [None] * 9
    assert await drain(pool, redis, settings) == 9
    assert None not in await _published(pool, ids)
