"""Connections of the read side and the two small mechanisms around them.

``RedisGate`` remembers that Redis just failed, so for ``redis_retry_seconds`` requests
go straight to Postgres instead of each paying a timeout; the first request after that
tries Redis again (which is how the service reconnects). ``SingleFlight`` lets a burst
of misses on one key share one Postgres query.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

import asyncpg
from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from query_api.metrics import REDIS_FAILURES, REDIS_TIMEOUTS
from shared.infra.db import create_pool
from shared.infra.outages import redis_connection_broken, redis_unavailable
from shared.settings import Settings

T = TypeVar("T")
RedisClient = Redis | RedisCluster  # what every reader and writer of projections holds
log = logging.getLogger("query_api.redis")

# what "Redis is down" looks like to a client (for ``except``; the gate also counts a
# connection closed under a command, shared.infra.outages.redis_unavailable)
REDIS_DOWN = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    # a cluster that is moving slots or lost a node (e.g. SlotNotCoveredError)
    redis_errors.RedisClusterException,
    OSError,
)
# a reply that did not come in time (Redis may be fine and this process busy)
REDIS_SLOW = (redis_errors.TimeoutError, TimeoutError)


def _slow(exc: BaseException) -> bool:
    """A timeout, every pooled connection busy, or a connection the client closed under
    the command after another one timed out: this process is busy, Redis not down."""
    return isinstance(
        exc, (*REDIS_SLOW, redis_errors.MaxConnectionsError)
    ) or redis_connection_broken(exc)


def connect_redis(settings: Settings, timeout: float | None = None) -> RedisClient:
    """A Redis (or Redis Cluster) client that fails fast instead of retrying.

    At most ``redis_max_connections`` per process (per node on a cluster); a read that
    finds them all busy falls back on its own and does not count as Redis being down.
    """
    timeout = timeout or settings.redis.timeout_seconds
    if settings.redis.cluster:
        return RedisCluster.from_url(
            settings.redis.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=settings.redis.max_connections,
        )
    return Redis.from_url(
        settings.redis.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=settings.redis.max_connections,
    )


@overload
async def connect_postgres(
    settings: Settings, max_size: int | None = None, *, replica: Literal[False] = False
) -> asyncpg.Pool: ...
@overload
async def connect_postgres(
    settings: Settings, max_size: int | None = None, *, replica: Literal[True]
) -> asyncpg.Pool | None: ...


async def connect_postgres(
    settings: Settings, max_size: int | None = None, *, replica: bool = False
) -> asyncpg.Pool | None:
    """A pool to the primary (``db.url``), or with ``replica=True`` to the hot
    standby (``db.replica_url``; None when not set). Which one answers a read is
    :class:`query_api.replica.ReadRouter`'s choice (ADR 0007)."""
    dsn = settings.db.replica_url if replica else settings.db.url
    if not dsn:
        return None
    pool = await create_pool(
        dsn,
        min_size=1,
        max_size=max_size or settings.db.pool_max,
        connect_timeout=settings.db.connect_timeout_seconds,
        command_timeout=settings.db.command_timeout_seconds,
    )
    return pool


class RedisUnavailable(Exception):
    """Redis is down (or was, a moment ago): read Postgres instead."""


class RedisGate:
    """Sends reads to Postgres for ``retry_seconds`` once Redis is down.

    A refused or broken connection trips it at once. A timeout alone does not: on a busy
    process a reply can be read late by the event loop, and sending *every* read to
    Postgres for a while would only add load where it already hurts (a slow-down then
    feeds itself). A timed-out read falls back on its own; only ``trip_after_timeouts``
    timeouts in a row, with no success between, count as Redis being down. A command
    on a connection the client itself closed after such a timeout counts as one too
    (``shared.infra.outages.redis_connection_broken``). Any other error is a bug and
    passes through (500).
    """

    def __init__(self, retry_seconds: float, trip_after_timeouts: int = 20) -> None:
        self._retry_seconds = retry_seconds
        self._trip_after_timeouts = trip_after_timeouts
        self._timeouts_in_a_row = 0
        self._down_until = 0.0
        self.degraded = False  # Redis counts as down

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation, or raise :class:`RedisUnavailable` without trying."""
        if self.degraded and time.monotonic() < self._down_until:
            raise RedisUnavailable
        try:
            result = await op()
        except Exception as exc:
            if not redis_unavailable(exc):
                raise  # a bug: 500
            if _slow(exc):
                REDIS_TIMEOUTS.inc()
                self._timeouts_in_a_row += 1
                if self._timeouts_in_a_row >= self._trip_after_timeouts:
                    self.trip()
                raise RedisUnavailable from exc
            if not self.degraded:
                log.warning(
                    "Redis unavailable (%r): reading Postgres for %ss", exc, self._retry_seconds
                )
            self.trip()
            raise RedisUnavailable from exc
        self._timeouts_in_a_row = 0
        self.degraded = False
        return result

    def trip(self) -> None:
        REDIS_FAILURES.inc()
        self._timeouts_in_a_row = 0
        self.degraded = True
        self._down_until = time.monotonic() + self._retry_seconds


class SingleFlight:
    """At most one call in flight per key; concurrent callers share its result."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        future = self._calls.get(key)
        if future is None:
            future = asyncio.ensure_future(call())
            self._calls[key] = future
            future.add_done_callback(lambda _: self._calls.pop(key, None))
        result: T = await asyncio.shield(future)
        return result
