"""Offers per rider, limited across every command API process through Redis.

A fixed window per rider: ``INCR`` of ``<prefix>rate:offers:<rider>:<window>`` and an
``EXPIRE`` in one pipelined round trip. Past ``limit`` offers in the window the rider
gets 429 with ``Retry-After`` (the seconds left in the window). Pricing an offer writes
nothing, so without a limit one rider could keep the external services busy.

When Redis does not answer, offers are *not* refused (fail open, logged): the command
side needs Redis for nothing else, and starting rides matters more than this guard.

On a single Redis the command API sends these commands over one pipelined connection
(``query_api.read_connection.ReadConnection``, :func:`lane`) instead of redis-py's
client: about a quarter of the CPU per offer (ADR 0018). A cluster keeps redis-py's.
"""

from __future__ import annotations

import logging
import time

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from command_api.debt_marks import DebtMarks
from query_api.read_connection import ReadConnection
from shared.errors import RateLimited
from shared.infra.outages import redis_unavailable
from shared.settings import Settings

log = logging.getLogger("rate_limit")

RedisClient = Redis | RedisCluster
_REDIS_DOWN = (redis_errors.RedisError, OSError)


def connect(settings: Settings) -> RedisClient:
    """A Redis (or Redis Cluster) client for the limiter that fails fast."""
    timeout = settings.redis.timeout_seconds
    if settings.redis.cluster:
        return RedisCluster.from_url(
            settings.redis.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
    return Redis.from_url(
        settings.redis.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def lane(settings: Settings) -> ReadConnection | None:
    """One pipelined connection to a single Redis for the offer's commands (ADR 0018);
    None for a cluster or a URL it cannot serve (``rediss://``): redis-py's client then.
    Connects on first use; the caller closes it (``aclose``)."""
    if settings.redis.cluster or not ReadConnection.supports(settings.redis.url):
        return None
    return ReadConnection(
        settings.redis.url,
        timeout_seconds=settings.redis.timeout_seconds,
        max_pending=settings.redis.max_connections,
    )


class OfferRateLimit:
    """``check(rider)`` raises :class:`RateLimited` past ``limit`` offers per ``window_seconds``.

    ``connection``: send the commands over it instead of ``redis`` (:func:`lane`).
    """

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        limit: int,
        window_seconds: int,
        debt_marks: DebtMarks | None = None,
        connection: ReadConnection | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limit = limit
        self._window = window_seconds
        self._marks = debt_marks
        self._connection = connection

    async def check(self, rider: str) -> None:
        """Count one offer for ``rider``; raises RateLimited when over the limit."""
        await self._check(rider, None)

    async def check_and_read_debt_mark(self, rider: str) -> bool:
        """``check``, and in the same round trip read the rider's debt mark
        (``command_api.debt_marks``): True when it says the rider owes nothing, False
        when Postgres must be asked (no mark, ``check``, no marks here, Redis down)."""
        marks = self._marks
        return await self._check(rider, None if marks is None else marks.key(rider))

    async def _check(self, rider: str, mark_key: str | None) -> bool:
        now = time.time()
        window = int(now // self._window)
        key = f"{self._prefix}rate:offers:{rider}:{window}"
        try:
            if self._connection is not None:
                encoded = key.encode()
                commands = [(b"INCR", encoded), (b"EXPIRE", encoded, b"%d" % (self._window + 1))]
                if mark_key is not None:
                    commands.append((b"GET", mark_key.encode()))
                count, _, *mark = await self._connection.execute(*commands)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, self._window + 1)
                    if mark_key is not None:
                        pipe.get(mark_key)
                    count, _, *mark = await pipe.execute()
        except Exception as exc:
            # any Redis error, a cluster in flux, a connection closed under the command
            if not isinstance(exc, _REDIS_DOWN) and not redis_unavailable(exc):
                raise
            # once per offer while Redis is down: bounded by shared.infra.logs
            log.warning("offer rate limit skipped", extra={"service": "redis", "error": repr(exc)})
            return False
        if int(count) > self._limit:
            retry_after = int((window + 1) * self._window - now) + 1
            raise RateLimited(
                retry_after,
                f"at most {self._limit} offers per {self._window} s; retry in {retry_after} s",
            )
        return bool(mark) and DebtMarks.is_clear(mark[0])
