"""RedisGate: a refused connection sends reads to Postgres at once; slow replies do not,
unless they keep coming (pure logic, no Redis)."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection

from query_api.stores import RedisGate, RedisUnavailable


async def ok() -> str:
    return "value"


async def slow() -> str:
    raise redis_errors.TimeoutError("Timeout reading from socket")


async def refused() -> str:
    raise redis_errors.ConnectionError("Connection refused")


async def test_a_refused_connection_trips_the_gate() -> None:
    gate = RedisGate(retry_seconds=60)
    with pytest.raises(RedisUnavailable):
        await gate.call(refused)
    assert gate.degraded
    with pytest.raises(RedisUnavailable):  # not even tried while down
        await gate.call(ok)


async def test_isolated_timeouts_fall_back_alone() -> None:
    gate = RedisGate(retry_seconds=60, trip_after_timeouts=3)
    for _ in range(2):
        with pytest.raises(RedisUnavailable):
            await gate.call(slow)
    assert not gate.degraded
    assert await gate.call(ok) == "value"  # a success resets the count
    for _ in range(2):
        with pytest.raises(RedisUnavailable):
            await gate.call(slow)
    assert not gate.degraded


async def test_timeouts_in_a_row_trip_the_gate() -> None:
    gate = RedisGate(retry_seconds=60, trip_after_timeouts=3)
    for _ in range(3):
        with pytest.raises(RedisUnavailable):
            await gate.call(slow)
    assert gate.degraded


async def test_the_gate_retries_redis_after_the_retry_period() -> None:
    gate = RedisGate(retry_seconds=0)
    with pytest.raises(RedisUnavailable):
        await gate.call(refused)
    assert await gate.call(ok) == "value"
    assert not gate.degraded


async def test_an_exhausted_connection_pool_is_slow_not_down() -> None:
    async def no_connection() -> str:
        raise redis_errors.MaxConnectionsError("Too many connections")

    gate = RedisGate(retry_seconds=60, trip_after_timeouts=3)
    with pytest.raises(RedisUnavailable):
        await gate.call(no_connection)
    assert not gate.degraded


async def closed_under_the_command() -> str:
    """What redis-py raises when another task closed the connection under this command
    (docs/scaling.md): the writer was already dropped, so the socket write fails with an
    AttributeError inside redis.asyncio.connection."""
    connection = Connection()
    connection._writer = None
    await connection._send_packed_command([b"PING"])
    return "never"


async def test_a_connection_closed_under_the_command_falls_back_alone() -> None:
    gate = RedisGate(retry_seconds=60, trip_after_timeouts=3)
    with pytest.raises(RedisUnavailable) as caught:
        await gate.call(closed_under_the_command)
    assert isinstance(caught.value.__cause__, AttributeError)
    assert not gate.degraded  # the client closed it after a timeout: Redis is not down
    for _ in range(2):
        with pytest.raises(RedisUnavailable):
            await gate.call(closed_under_the_command)
    assert gate.degraded  # but it counts with the timeouts in a row


async def test_a_cluster_in_flux_trips_the_gate() -> None:
    async def slot_not_covered() -> str:
        raise redis_errors.SlotNotCoveredError('Slot "42" is not covered by the cluster.')

    gate = RedisGate(retry_seconds=60)
    with pytest.raises(RedisUnavailable):
        await gate.call(slot_not_covered)
    assert gate.degraded


@pytest.mark.parametrize(
    "error",
    [
        AttributeError("'NoneType' object has no attribute 'writelines'"),  # ours: a bug
        ValueError("nope"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key"),
    ],
)
async def test_any_other_error_is_a_bug_and_passes_through(error: Exception) -> None:
    async def fails() -> str:
        raise error

    gate = RedisGate(retry_seconds=60)
    with pytest.raises(type(error)):
        await gate.call(fails)
    assert not gate.degraded
