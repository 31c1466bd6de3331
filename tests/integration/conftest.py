"""Fixtures of the read-side integration tests: a pool and a Redis client for a module.

Each module may override ``settings``; these fixtures follow the override.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.settings import Settings


@pytest.fixture(scope="module")
def settings(base_settings: Settings, database: str) -> Settings:
    return base_settings


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    db = await asyncpg.create_pool(settings.db.url, min_size=1, max_size=5)
    assert db is not None
    yield db
    await db.close()


@pytest.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis.url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
