"""The query API's pipelined Redis read connection against real servers: replies in
order under concurrency, and failures that look like redis-py's to the Redis gate."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from query_api.read_connection import ReadConnection
from query_api.stores import RedisGate, RedisUnavailable
from tests.conftest import REDIS_URL
from tests.integration.test_query_api import start_redis
from tests.ports import free_port


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_concurrent_reads_get_their_own_values(redis: Redis) -> None:
    prefix = f"test:readconn:{secrets.token_hex(4)}:"
    keys = [f"{prefix}{n}" for n in range(300)]
    for n, key in enumerate(keys):
        await redis.hset(key, mapping={"d": f"value-{n}".encode() * (n % 7 + 1)})
    reader = ReadConnection(REDIS_URL, timeout_seconds=5.0, max_pending=1_000)
    try:
        values = await asyncio.gather(*(reader.hget(k, "d") for k in keys * 3))
        assert values == [f"value-{n % 300}".encode() * (n % 300 % 7 + 1) for n in range(900)]
        assert await reader.hget(f"{prefix}absent", "d") is None
        assert await reader.hget(keys[0], "absent") is None
    finally:
        await reader.aclose()
        await redis.delete(*keys)


async def test_an_error_reply_fails_only_its_read(redis: Redis) -> None:
    key = f"test:readconn:{secrets.token_hex(4)}"
    await redis.set(key + ":string", b"x")
    await redis.hset(key, mapping={"d": b"ok"})
    reader = ReadConnection(REDIS_URL, timeout_seconds=5.0, max_pending=100)
    try:
        wrong, right = await asyncio.gather(
            reader.hget(key + ":string", "d"), reader.hget(key, "d"), return_exceptions=True
        )
        assert isinstance(wrong, redis_errors.ResponseError)  # WRONGTYPE: a bug, not an outage
        assert right == b"ok"
    finally:
        await reader.aclose()
        await redis.delete(key, key + ":string")


async def test_refused_then_killed_then_back() -> None:
    port = free_port()
    reader = ReadConnection(f"redis://127.0.0.1:{port}/0", timeout_seconds=1.0, max_pending=100)
    gate = RedisGate(retry_seconds=0.0)
    with pytest.raises(RedisUnavailable):  # nothing listens: refused, the gate trips
        await gate.call(lambda: reader.hget("k", "d"))
    assert gate.degraded
    server = start_redis(port)
    try:
        assert await gate.call(lambda: reader.hget("k", "d")) is None  # connects again
        assert not gate.degraded
        server.kill()
        server.wait()
        with pytest.raises(redis_errors.ConnectionError):
            await reader.hget("k", "d")
        server = start_redis(port)
        assert await reader.hget("k", "d") is None
    finally:
        await reader.aclose()
        server.kill()
        server.wait()


async def test_a_silent_server_times_out_every_waiting_read_then_reconnects() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = ReadConnection(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.2, max_pending=100)
    gate = RedisGate(retry_seconds=60, trip_after_timeouts=1_000)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(gate.call(lambda: reader.hget("k", "d")) for _ in range(20)),
            return_exceptions=True,
        )
        assert 0.15 < loop.time() - started < 1.5
        causes = [r.__cause__ if isinstance(r, RedisUnavailable) else r for r in results]
        assert all(isinstance(c, redis_errors.TimeoutError) for c in causes)
        assert not gate.degraded  # timeouts alone: slow, not down
        with pytest.raises(redis_errors.TimeoutError):  # a new connection, still silent
            await reader.hget("k", "d")
        assert len(accepted) == 2
    finally:
        await reader.aclose()
        server.close()
        for writer in accepted:
            writer.close()


async def test_too_many_waiting_reads_are_busy_not_down(redis: Redis) -> None:
    reader = ReadConnection(REDIS_URL, timeout_seconds=5.0, max_pending=5)
    gate = RedisGate(retry_seconds=60)
    try:
        results = await asyncio.gather(
            *(gate.call(lambda: reader.hget("test:readconn:none", "d")) for _ in range(50)),
            return_exceptions=True,
        )
        assert results.count(None) >= 5
        assert any(isinstance(r, RedisUnavailable) for r in results)
        assert not gate.degraded
    finally:
        await reader.aclose()


async def test_a_database_number_and_password_are_sent(redis: Redis) -> None:
    key = f"test:readconn:{secrets.token_hex(4)}"
    other = Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/3")
    await other.hset(key, mapping={"d": b"in db 3"})
    reader = ReadConnection(REDIS_URL.rsplit("/", 1)[0] + "/3", timeout_seconds=5.0, max_pending=10)
    wrong = ReadConnection(
        REDIS_URL.replace("redis://", "redis://:not-the-password@"),
        timeout_seconds=5.0,
        max_pending=10,
    )
    try:
        assert await reader.hget(key, "d") == b"in db 3"
        assert await redis.hget(key, "d") is None
        with pytest.raises(redis_errors.ConnectionError):  # no password set: AUTH refused
            await wrong.hget(key, "d")
    finally:
        await reader.aclose()
        await wrong.aclose()
        await other.delete(key)
        await other.aclose()


async def test_a_sorted_set_comes_highest_score_first(redis: Redis) -> None:
    key = f"test:readconn:{secrets.token_hex(4)}"
    await redis.zadd(key, {"old": 1_700_000_000_000, "new": 1_800_000_000_000, "mid": 17.5})
    reader = ReadConnection(REDIS_URL, timeout_seconds=5.0, max_pending=10)
    try:
        assert await reader.zrevrange_with_scores(key) == [
            (b"new", 1_800_000_000_000.0),
            (b"old", 1_700_000_000_000.0),
            (b"mid", 17.5),
        ]
        assert await reader.zrevrange_with_scores(key + ":absent") == []
    finally:
        await reader.aclose()
        await redis.delete(key)
