"""The read-side end-to-end tests of ``tests/e2e/test_read_side.py``, unchanged, over the
scaled-out engines: the projector writes the Redis Cluster, the query API reads it and
falls back to the hot-standby replica (through the ADR 0007 rule), the command API and
the worker write the primary.

The test functions are the single-node module's own (imported, not copied), and so are
its ``projector`` and ``query`` fixtures; only the fixtures that name an engine are
redefined here, so every assertion holds in both configurations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import RedisCluster

from shared.settings import Settings
from tests.e2e import test_read_side as single
from tests.e2e.test_read_side import delete_run_keys, prefix, projector, query  # noqa: F401

# every test of the single-node module, collected again here
globals().update({name: getattr(single, name) for name in dir(single) if name.startswith("test_")})


@pytest.fixture(scope="module")
def read_settings(scaled_settings: Settings) -> Settings:
    """As in the single-node module: a quick polling fallback, no metrics server."""
    return dataclasses.replace(
        scaled_settings, projector_poll_seconds=0.5, projector_metrics_port=0
    )


@pytest.fixture(scope="module")
def api(scaled_api: AsyncTestClient[Any]) -> AsyncTestClient[Any]:
    return scaled_api


@pytest.fixture(scope="module")
def db(scaled_db: asyncpg.Pool) -> asyncpg.Pool:
    return scaled_db


@pytest.fixture(scope="module")
async def redis(
    read_settings: Settings, cluster_client: RedisCluster
) -> AsyncIterator[RedisCluster]:
    yield cluster_client
    await delete_run_keys(cluster_client, read_settings.redis_key_prefix)  # type: ignore[arg-type]
