"""The pool and the Redis client a test module reads and checks with, in one place.

The integration tests (``tests/integration/conftest.py``), the read-side e2e tests
(``tests/e2e``) and the scale-out tests (``tests/scale/conftest.py``) hold a pool and a
Redis client of the same shape; their fixtures are these context managers over their
own settings (the machine's Postgres and Redis, or the engines of ``tests/engines.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
from redis.asyncio import Redis, RedisCluster

Client = TypeVar("Client", Redis, RedisCluster)


@asynccontextmanager
async def postgres_pool(dsn: str, max_size: int = 5) -> AsyncIterator[asyncpg.Pool]:
    """A small pool to ``dsn``, closed on exit."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


async def delete_run_keys(redis: Redis | RedisCluster, prefix: str) -> int:
    """Delete every key of this run's prefix (on every master of a cluster): a flush of
    *our* keys. Never FLUSHDB or FLUSHALL: the Redis is shared with other runs."""
    assert prefix, "refusing to delete without a prefix"
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i : i + 500])
    return len(keys)


@asynccontextmanager
async def run_keys(client: Client, prefix: str) -> AsyncIterator[Client]:
    """``client``, then the run's keys (``prefix``) deleted and the client closed."""
    try:
        yield client
    finally:
        await delete_run_keys(client, prefix)
        await client.aclose()
