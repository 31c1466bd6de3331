"""Per-rider debt marks in Redis: an offer skips the Postgres debt read for a rider
recently seen owing nothing (issue 13, ADR 0013).

``<prefix>debt:<rider>`` holds one of:

- ``clear``: an offer read ``user_summary.debt`` for this rider less than
  :data:`CLEAR_SECONDS` ago and found nothing owed (``shared.lifecycle.DEBT_ALLOWED``),
  and no debt has been recorded since. Written with ``NX`` from that read, so it never
  replaces ``check``; and only if the read began less than :data:`READ_MAX_AGE_SECONDS` ago.
- ``check``: a debt is being recorded for this rider, or just was. Written for
  :data:`CHECK_SECONDS` right before the transaction that records the debt and again
  right after it commits, replacing a ``clear`` mark.

The offer reads the mark in the rate limiter's Redis round trip
(``OfferRateLimit.check_and_read_debt_mark``) and reads Postgres unless it says
``clear``. A ``clear`` mark can therefore only come from a read that saw no debt and
finished its write before the debt's ``check`` (which then replaces it), or fail to be
written because ``check`` is there: a recorded debt is seen by the next offer. What it
cannot see is a debt written to ``user_summary`` by hand (SQL, not the worker) while
the rider has a ``clear`` mark; and if Redis loses a ``check`` write the mark may stay
``clear`` for up to ``CLEAR_SECONDS``. Neither lets anyone ride: the start step refuses
a rider with debt in Postgres, whatever Redis says (ADR 0002).

When Redis does not answer, nothing is written and offers read Postgres.

The command API writes its marks over the rate limiter's pipelined connection
(``command_api.rate_limit.lane``, ADR 0018) on a single Redis.
"""

from __future__ import annotations

import logging
import time

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster

from query_api.read_connection import ReadConnection
from shared.infra.outages import redis_unavailable

log = logging.getLogger("debt_marks")

CLEAR = b"clear"
CHECK = b"check"
CLEAR_SECONDS = 600
CHECK_SECONDS = 60
READ_MAX_AGE_SECONDS = 5.0
_REDIS_DOWN = (redis_errors.RedisError, OSError)


class DebtMarks:
    """Reads and writes the debt marks of one deployment (``prefix``) in ``redis``, or
    over ``connection`` when given (``command_api.rate_limit.lane``)."""

    def __init__(
        self, redis: Redis | RedisCluster, prefix: str, connection: ReadConnection | None = None
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._connection = connection

    def key(self, rider: str) -> str:
        return f"{self._prefix}debt:{rider}"

    @staticmethod
    def is_clear(value: object) -> bool:
        """Whether a mark read back from Redis (bytes or None) says the rider owes nothing."""
        return value == CLEAR

    async def note_clear(self, rider: str, read_started: float) -> None:
        """The rider's debt was read as nothing owed by a read that began at
        ``read_started`` (``time.monotonic()``): mark ``clear`` unless ``check`` is there
        or the read is older than ``READ_MAX_AGE_SECONDS``. Redis errors are ignored."""
        if time.monotonic() - read_started > READ_MAX_AGE_SECONDS:
            return
        await self._set(rider, CLEAR, CLEAR_SECONDS, only_new=True, level=logging.DEBUG)

    async def note_debt(self, rider: str) -> None:
        """A debt is being recorded for ``rider`` (call before its transaction and again
        after it commits): mark ``check``. Redis errors are logged, not raised: the start
        step refuses the rider in Postgres anyway."""
        await self._set(rider, CHECK, CHECK_SECONDS, only_new=False, level=logging.WARNING)

    async def _set(
        self, rider: str, value: bytes, seconds: int, *, only_new: bool, level: int
    ) -> None:
        try:
            if self._connection is not None:
                command = (b"SET", self.key(rider).encode(), value, b"EX", b"%d" % seconds)
                await self._connection.execute((*command, b"NX") if only_new else command)
            else:
                await self._redis.set(self.key(rider), value, ex=seconds, nx=only_new)
        except Exception as exc:
            if not isinstance(exc, _REDIS_DOWN) and not redis_unavailable(exc):
                raise
            log.log(level, "debt mark %s of %s not written: %r", value.decode(), rider, exc)
