"""The offer's rate limit and the debt marks over the command API's pipelined Redis
connection (``command_api.rate_limit.lane``, ADR 0018), against real Redis: the same
keys, counts, expiries and marks as over redis-py's client, and the same failing open."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from command_api.debt_marks import CHECK, CHECK_SECONDS, CLEAR, CLEAR_SECONDS, DebtMarks
from command_api.rate_limit import OfferRateLimit, lane
from query_api.read_connection import ReadConnection
from shared.errors import RateLimited
from shared.settings import Settings


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[ReadConnection]:
    made = lane(settings)
    assert made is not None  # a single Redis: the tests' one
    yield made
    await made.aclose()


def rider() -> str:
    return f"lane-user-{uuid.uuid4().hex[:10]}"


def test_a_cluster_or_tls_keeps_redis_py(settings: Settings) -> None:
    assert lane(settings.replace(redis={"cluster": True})) is None
    assert lane(settings.replace(redis={"url": "rediss://127.0.0.1:6379/0"})) is None


async def test_offers_are_counted_and_refused_past_the_limit_as_with_redis_py(
    connection: ReadConnection, redis: Redis, settings: Settings
) -> None:
    prefix = settings.redis.key_prefix
    marks = DebtMarks(redis, prefix, connection)
    limiter = OfferRateLimit(redis, prefix, 3, 60, marks, connection)
    plain = OfferRateLimit(redis, prefix, 3, 60, DebtMarks(redis, prefix))
    who = rider()
    assert await limiter.check_and_read_debt_mark(who) is False  # no mark yet
    await plain.check(who)  # both clients count in the same key
    await limiter.check(who)
    with pytest.raises(RateLimited) as refused:
        await limiter.check(who)
    assert 1 <= refused.value.retry_after <= 61
    keys = [key async for key in redis.scan_iter(match=f"{prefix}rate:offers:{who}:*")]
    assert len(keys) == 1
    assert await redis.get(keys[0]) == b"4"
    assert 0 < await redis.ttl(keys[0]) <= 61


async def test_marks_are_written_and_read_as_with_redis_py(
    connection: ReadConnection, redis: Redis, settings: Settings
) -> None:
    prefix = settings.redis.key_prefix
    marks = DebtMarks(redis, prefix, connection)
    limiter = OfferRateLimit(redis, prefix, 1_000, 60, marks, connection)
    who = rider()
    await marks.note_clear(who, time.monotonic())
    assert await redis.get(marks.key(who)) == CLEAR
    assert CLEAR_SECONDS - 5 < await redis.ttl(marks.key(who)) <= CLEAR_SECONDS
    assert await limiter.check_and_read_debt_mark(who) is True

    await marks.note_debt(who)  # replaces clear
    assert await redis.get(marks.key(who)) == CHECK
    assert CHECK_SECONDS - 5 < await redis.ttl(marks.key(who)) <= CHECK_SECONDS
    await marks.note_clear(who, time.monotonic())  # NX: never replaces check
    assert await redis.get(marks.key(who)) == CHECK
    assert await limiter.check_and_read_debt_mark(who) is False


async def test_concurrent_offers_share_the_connection_and_each_gets_its_own_count(
    connection: ReadConnection, redis: Redis, settings: Settings
) -> None:
    limiter = OfferRateLimit(redis, settings.redis.key_prefix, 20, 60, None, connection)
    who = rider()
    results = await asyncio.gather(*(limiter.check(who) for _ in range(25)), return_exceptions=True)
    assert sum(isinstance(r, RateLimited) for r in results) == 5
    assert all(r is None or isinstance(r, RateLimited) for r in results)


async def test_without_redis_offers_fail_open_and_marks_are_not_written(
    redis: Redis, settings: Settings
) -> None:
    nobody = ReadConnection("redis://127.0.0.1:1/0", timeout_seconds=0.2, max_pending=10)
    try:
        prefix = settings.redis.key_prefix
        marks = DebtMarks(redis, prefix, nobody)
        down = OfferRateLimit(redis, prefix, 1, 60, marks, nobody)
        who = rider()
        for _ in range(3):  # never refused, never a mark: Postgres is read
            assert await down.check_and_read_debt_mark(who) is False
        await marks.note_debt(who)  # logged, not raised
        await marks.note_clear(who, time.monotonic())
        assert await redis.get(marks.key(who)) is None
    finally:
        await nobody.aclose()


async def test_an_error_reply_fails_open_and_leaves_the_connection_usable(
    connection: ReadConnection, redis: Redis, settings: Settings
) -> None:
    prefix = settings.redis.key_prefix
    limiter = OfferRateLimit(redis, prefix, 1, 60, None, connection)
    who = rider()
    window = int(time.time() // 60)
    await redis.set(f"{prefix}rate:offers:{who}:{window}", b"not a number", ex=60)
    if int(time.time() // 60) != window:  # the window turned meanwhile: nothing to test
        pytest.skip("the rate window turned")
    assert await limiter.check_and_read_debt_mark(who) is False  # INCR refused: fails open
    other = rider()
    await limiter.check(other)  # the connection still answers in order
    with pytest.raises(RateLimited):
        await limiter.check(other)
