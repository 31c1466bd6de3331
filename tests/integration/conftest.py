"""Fixtures of the read-side integration tests: a pool and a Redis client for a module
(their shape is shared with the e2e and scale tests: ``tests/stores.py``).

Each module may override ``settings``; these fixtures follow the override.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.settings import Settings
from tests.stores import postgres_pool, run_keys


@pytest.fixture(scope="module")
def settings(base_settings: Settings, database: str) -> Settings:
    return base_settings


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with postgres_pool(settings.db.url) as db:
        yield db


@pytest.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    async with run_keys(Redis.from_url(settings.redis.url), settings.redis.key_prefix) as client:
        yield client
