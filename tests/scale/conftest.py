"""Fixtures of the scale-out tests: the system over real engines started by the tests,
a Redis Cluster (3 masters + 1 replica each) and a Postgres primary with a hot standby
(``tests/engines.py``). Each engine starts once per session, on free ports in a
temporary directory, and is torn down at the end whatever happened.

``scaled_settings`` is the run's settings pointed at them: the command side, projector
and rebuild write the primary, the query API reads the cluster and falls back to the
replica (ADR 0007). The stubs and the run's key prefix are shared with the other tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import RedisCluster

from command_api.app import create_app as create_command_app
from migrations.runner import migrate
from shared.settings import Settings
from tests.e2e.conftest import ids  # noqa: F401 - the same fixture, visible here
from tests.engines import PostgresPair, RedisClusterEngine, postgres_pair, redis_cluster


@pytest.fixture(scope="session")
def cluster_engine() -> Iterator[RedisClusterEngine]:
    with redis_cluster() as engine:
        yield engine


@pytest.fixture(scope="session")
def pg_pair() -> Iterator[PostgresPair]:
    with postgres_pair() as pair:
        yield pair


@pytest.fixture(scope="session")
async def scaled_settings(
    base_settings: Settings, cluster_engine: RedisClusterEngine, pg_pair: PostgresPair
) -> Settings:
    """The run's settings over the cluster and the primary/replica pair, migrated."""
    name = base_settings.database_url.rsplit("/", 1)[1]
    settings = dataclasses.replace(
        base_settings,
        database_url=pg_pair.primary_dsn(name),
        database_replica_url=pg_pair.replica_dsn(name),
        redis_url=cluster_engine.url,
        redis_cluster=True,
        # a killed master is taken over within seconds: try the cluster again soon
        redis_retry_seconds=0.5,
    )
    await migrate(settings)
    return settings


@pytest.fixture(scope="session")
async def scaled_api(scaled_settings: Settings, stubs: str) -> AsyncIterator[AsyncTestClient[Any]]:
    """The command API in-process, writing the pair's primary."""
    async with AsyncTestClient(create_command_app(scaled_settings)) as client:
        yield client


@pytest.fixture(scope="session")
async def scaled_db(scaled_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool to the pair's primary (what the tests check against)."""
    pool = await asyncpg.create_pool(scaled_settings.database_url, min_size=1, max_size=5)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def replica_db(scaled_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(scaled_settings.database_replica_url, min_size=1, max_size=2)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def cluster_client(scaled_settings: Settings) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(scaled_settings.redis_url)
    yield client
    await client.aclose()
