"""The command side's composition root: the one place that builds ``rides.Deps``.

The command API's lifespan, the worker and the tests all open their dependencies here,
so a new dependency is wired once. Resources are closed in reverse order of opening
(HTTP client, then the Postgres pool), also when opening one of them fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg

from command_api import rides
from command_api.debt_marks import DebtMarks
from command_api.external import ExternalServices, make_http_client
from command_api.rate_limit import RedisClient
from command_api.rate_limit import connect as connect_redis
from query_api.read_connection import ReadConnection
from shared.infra.db import close_pool, create_pool
from shared.infra.offer_keys import offer_signer
from shared.infra.outages import redis_unavailable
from shared.settings import Settings


@asynccontextmanager
async def open_deps(
    settings: Settings,
    *,
    pool: asyncpg.Pool | None = None,
    pool_size: tuple[int, int] | None = None,
    services: type[ExternalServices] = ExternalServices,
    redis: RedisClient | None = None,
    redis_connection: ReadConnection | None = None,
) -> AsyncIterator[rides.Deps]:
    """The commands' dependencies, open for the duration of the ``async with``.

    ``pool``: use this Postgres pool (the caller closes it) instead of opening one of
    ``pool_size`` (min, max) connections, by default ``settings.db.pool_min/pool_max``.
    ``services``: the external services' client class (tests pass a subclass that
    injects failures). ``redis``: the client of the riders' debt marks (the caller
    closes it), else one is opened (connecting lazily: Redis down is no error here);
    ``redis_connection``: the marks are written over it instead (the caller closes it;
    ``command_api.rate_limit.lane``).
    Raises what asyncpg raises when Postgres cannot be reached.
    """
    async with AsyncExitStack() as stack:
        if redis is None:
            redis = connect_redis(settings)
            stack.push_async_callback(_close_redis, redis)
        if pool is None:
            low, high = pool_size or (settings.db.pool_min, settings.db.pool_max)
            pool = await create_pool(
                settings.db.url,
                min_size=low,
                max_size=high,
                connect_timeout=settings.db.connect_timeout_seconds,
                command_timeout=settings.db.command_timeout_seconds,
            )
            stack.push_async_callback(close_pool, pool)
        client = make_http_client(settings)
        stack.push_async_callback(client.aclose)
        yield rides.Deps(
            pool=pool,
            services=services(client, settings),
            signer=await offer_signer(settings, pool),
            settings=settings,
            debt_marks=DebtMarks(redis, settings.redis.key_prefix, redis_connection),
        )


async def _close_redis(redis: RedisClient) -> None:
    try:
        await redis.aclose()
    except Exception as exc:  # a busy node: closing can time out; stop anyway
        if not redis_unavailable(exc):
            raise
