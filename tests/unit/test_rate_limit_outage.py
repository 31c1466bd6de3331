"""The offer limiter fails open when Redis cannot answer, a cluster in flux and a
connection closed under the command included (command_api/rate_limit.py); any other error
is a bug and passes (pure logic over a stand-in client)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection

from command_api.rate_limit import OfferRateLimit, RedisClient


class FailingPipeline:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    async def __aenter__(self) -> FailingPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def incr(self, key: str) -> None: ...

    def expire(self, key: str, seconds: int) -> None: ...

    async def execute(self) -> list[Any]:
        if self.error is not None:
            raise self.error
        connection = Connection()  # the writer dropped by a concurrent disconnect
        connection._writer = None
        await connection._send_packed_command([b"INCR"])
        return []


class StandInRedis:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def pipeline(self, transaction: bool = True) -> FailingPipeline:
        return FailingPipeline(self.error)


def limiter(error: BaseException | None) -> OfferRateLimit:
    return OfferRateLimit(cast(RedisClient, StandInRedis(error)), "p:", limit=1, window_seconds=60)


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ConnectionError("refused"),
        redis_errors.SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
        redis_errors.RedisClusterException("Redis Cluster cannot be connected"),
        None,  # AttributeError from redis-py's socket write: the connection closed under it
    ],
)
async def test_offers_are_not_refused_when_redis_cannot_answer(
    error: BaseException | None,
) -> None:
    await limiter(error).check("user-1")  # no RateLimited, nothing raised


async def test_a_bug_passes() -> None:
    with pytest.raises(ValueError, match="nope"):
        await limiter(ValueError("nope")).check("user-1")
