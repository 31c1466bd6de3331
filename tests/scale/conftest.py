"""Fixtures of the scale-out tests: the system over real engines started by the tests,
a Redis Cluster (3 masters + 1 replica each) and a Postgres primary with a hot standby
(``tests/engines.py``). Each engine starts once per session, on free ports in a
temporary directory, and is torn down at the end whatever happened.

``scaled_settings`` is the run's settings pointed at them: the command side, projector
and rebuild write the primary, the query API reads the cluster and falls back to the
replica (ADR 0007). The stubs and the run's key prefix are shared with the other tests.

The fixtures the read-side e2e tests take (``read_settings``, ``api``, ``db``, ``redis``,
and through them ``projector`` and ``query``) are redefined here over the engines, so
those tests run unchanged in this directory; the pools and the Redis client have the
shape of every other test's (``tests/stores.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import RedisCluster

from migrations.runner import migrate
from shared.settings import Settings
from tests.auth import Tokens
from tests.e2e.conftest import (
    command_client,
    ids,  # noqa: F401 - the same fixture, visible here
)
from tests.e2e.test_read_side import prefix, projector, query  # noqa: F401
from tests.engines import PostgresPair, RedisClusterEngine, postgres_pair, redis_cluster
from tests.stores import postgres_pool, run_keys


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
    name = base_settings.db.url.rsplit("/", 1)[1]
    settings = base_settings.replace(
        db={"url": pg_pair.primary_dsn(name), "replica_url": pg_pair.replica_dsn(name)},
        # a killed master is taken over within seconds: try the cluster again soon
        redis={"url": cluster_engine.url, "cluster": True, "retry_seconds": 0.5},
    )
    await migrate(settings)
    return settings


@pytest.fixture(scope="session")
async def scaled_api(
    scaled_settings: Settings, stubs: str, tokens: Tokens
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The command API in-process, writing the pair's primary; each request carries the
    token of the rider it is for (tests/auth.py)."""
    async with command_client(scaled_settings) as client:
        yield client


@pytest.fixture(scope="session")
async def scaled_db(scaled_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool to the pair's primary (what the tests check against)."""
    async with postgres_pool(scaled_settings.db.url) as pool:
        yield pool


@pytest.fixture(scope="session")
async def replica_db(scaled_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with postgres_pool(scaled_settings.db.replica_url, max_size=2) as pool:
        yield pool


# --- the read-side e2e fixtures, over the engines --------------------------------------------


@pytest.fixture(scope="module")
def read_settings(scaled_settings: Settings) -> Settings:
    """As in tests/e2e/test_read_side.py: no metrics server."""
    return scaled_settings.replace(read={"projector_metrics_port": 0})


@pytest.fixture(scope="module")
def api(scaled_api: AsyncTestClient[Any]) -> AsyncTestClient[Any]:
    return scaled_api


@pytest.fixture(scope="module")
def db(scaled_db: asyncpg.Pool) -> asyncpg.Pool:
    return scaled_db


@pytest.fixture(scope="module")
async def redis(read_settings: Settings) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(read_settings.redis.url)
    async with run_keys(client, read_settings.redis.key_prefix):
        yield client
