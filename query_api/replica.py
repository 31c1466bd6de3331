"""Which Postgres a fallback read goes to, so that a lagging replica never shows a screen
older than one already shown (docs/adr/0007-read-replica-consistency.md).

The rule: a read may be answered by the replica only when the replica has replayed all
the WAL the primary had written when the read began. Every change a screen (or a
command's answer) could have shown before that moment is then visible on the replica.
Otherwise the read goes to the primary. A read the replica fails after it was chosen
(cancelled by a recovery conflict, the replica gone) is read again on the primary
(:meth:`ReadRouter.read`), so a hot standby never turns an answerable read into an error.

A primary that is *down* (it refuses or drops the connection, is shutting down or starting
up) has no new writes for the replica to miss: the replica answers as it is. A primary that
is only *slow* (the check's statement or the wait for one of its pooled connections
outlasts ``check_timeout_seconds``, or it refuses more connections) is busy, not down: it
goes on committing, so the replica may be behind what a screen already showed. Such a read
is answered by the primary within ``primary_deadline_seconds`` (pool wait included), else
the read fails with :class:`TimeoutError` (the caller's 503 ``dependency_unavailable``).
A primary that never answers at all (a black-holed host) looks busy, not down: its reads
are answered 503 rather than from a replica that may be behind (ADR 0015).

The check costs two trivial statements that touch no table (``pg_current_wal_insert_lsn()``
on the primary, ``pg_last_wal_replay_lsn()`` on the replica) and is shared: a check that
*started* after a read began answers for that read, so under load one check in flight
serves every miss that arrived before it. A replica a few milliseconds behind is waited
for, up to ``replica_max_wait_seconds``, before giving up on it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from query_api.metrics import REPLICA_CHECKS, REPLICA_READ_FAILURES, REPLICA_READS
from shared.infra.outages import POSTGRES_DOWN

log = logging.getLogger("query_api.replica")
R = TypeVar("R")

# What a read on the replica can fail with that the primary would answer: a hot standby
# cancels a query that holds what the replay of the primary's WAL needs ("canceling
# statement due to conflict with recovery": 40001, or 40P01 for a buffer-pin deadlock)
# once ``max_standby_streaming_delay`` has passed, at once when replay is already that
# far behind; or the replica went away after the router chose it.
REPLICA_FAILED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    *POSTGRES_DOWN,
)

# insert, not write/flush LSN: with synchronous_commit = off a commit is acknowledged
# once inserted, before it is written
_PRIMARY_POSITION = "SELECT pg_current_wal_insert_lsn()::text"
# NULL replay position: not a standby (a promoted replica or the primary itself): current
_REPLAYED = "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, NOT pg_is_in_recovery())"

_ON_REPLICA, _ON_PRIMARY = REPLICA_READS.labels("replica"), REPLICA_READS.labels("primary")
_CURRENT, _BEHIND = REPLICA_CHECKS.labels("current"), REPLICA_CHECKS.labels("behind")
_REPLICA_DOWN = REPLICA_CHECKS.labels("replica_down")
_PRIMARY_DOWN = REPLICA_CHECKS.labels("primary_down")
_PRIMARY_BUSY = REPLICA_CHECKS.labels("primary_busy")

# The primary is gone (ADR 0007's "primary down"): refused, reset or unreachable, the
# connection closed under us, SQLSTATE class 08, shutting down, crashed or starting up
# (57P01-57P03). Everything else the check can meet, a timeout first (TimeoutError is an
# OSError), a cancelled statement (57014), "too many connections" (53300: it is serving
# others) and any other error, means the primary is up and may be committing: busy
# (ADR 0015).
PRIMARY_GONE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InternalClientError,
)


def primary_gone(exc: BaseException) -> bool:
    """Whether the primary check's failure ``exc`` says the primary is down (not busy)."""
    return isinstance(exc, PRIMARY_GONE) and not isinstance(exc, TimeoutError)


class _Choice(enum.Enum):
    """What a check decided for the reads that share it."""

    REPLICA = "replica"  # current, or the primary is down
    PRIMARY = "primary"  # the replica is behind or down
    PRIMARY_BUSY = "primary_busy"  # the primary did not tell its position in time


def _warn(event: str, service: str, exc: BaseException) -> None:
    """A warning of the check: under overload a check fails many times a second
    (docs/scaling.md), so these are bounded per interval by shared.infra.logs
    (REPEATED_FAILURES); ``query_replica_checks_total{outcome}`` counts every one."""
    log.warning(event, extra={"service": service, "error": repr(exc)})


class ReadRouter:
    """Chooses the pool of each fallback read: ``primary`` alone when no replica is set.

    ``max_wait_seconds``: how long a read waits for a replica a little behind;
    ``check_timeout_seconds``: how long each of the check's statements may take (pool
    wait included) before the primary counts as busy or the replica as down;
    ``primary_deadline_seconds``: how long a read sent to a busy primary may take, pool
    wait included, before it fails with :class:`TimeoutError`.
    """

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None,
        max_wait_seconds: float = 0.05,
        check_timeout_seconds: float = 0.5,
        primary_deadline_seconds: float = 5.0,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self._max_wait = max_wait_seconds
        self._timeout = check_timeout_seconds
        self._primary_deadline = primary_deadline_seconds
        self._fresh_as_of = float("-inf")  # the replica had replayed the primary as of then
        self._check: tuple[float, asyncio.Future[_Choice]] | None = None

    async def pool(self) -> asyncpg.Pool:
        """The pool a read that begins now must use (see the module's rule)."""
        return (await self._choose())[0]

    async def _choose(self) -> tuple[asyncpg.Pool, bool]:
        """The pool, and whether it is a primary found busy (the read gets a deadline)."""
        if self.replica is None:
            return self.primary, False
        began = time.monotonic()
        choice = _Choice.REPLICA if self._fresh_as_of >= began else await self._shared(began)
        if choice is _Choice.REPLICA:
            _ON_REPLICA.inc()
            return self.replica, False
        _ON_PRIMARY.inc()
        return self.primary, choice is _Choice.PRIMARY_BUSY

    async def read(self, query: Callable[[asyncpg.Pool], Awaitable[R]]) -> R:
        """Run ``query`` on :meth:`pool`'s choice; a read the replica fails with
        :data:`REPLICA_FAILED` (a timeout aside) is run again on the primary. The
        primary's errors pass; a read sent to a busy primary raises
        :class:`TimeoutError` after ``primary_deadline_seconds``."""
        pool, busy = await self._choose()
        if busy:
            async with asyncio.timeout(self._primary_deadline):
                return await query(pool)
        if pool is self.primary:
            return await query(pool)
        try:
            return await query(pool)
        except REPLICA_FAILED as exc:
            if isinstance(exc, TimeoutError):  # a slow statement: the primary's would wait
                raise  # as long again on a busy box (503)
            # once per read while the replica fails: bounded by shared.infra.logs
            log.warning(
                "replica read failed, reading the primary",
                extra={"service": "postgres_replica", "error": repr(exc)},
            )
            REPLICA_READ_FAILURES.inc()
            return await query(self.primary)

    async def _shared(self, began: float) -> _Choice:
        """Join the check in flight when it started after ``began``, else start one."""
        check = self._check
        if check is None or check[0] < began:
            started = time.monotonic()
            future = asyncio.ensure_future(self._probe(started))
            check = self._check = (started, future)
        return await asyncio.shield(check[1])

    async def _probe(self, started: float) -> _Choice:
        """Has the replica replayed what the primary had written at ``started``?"""
        assert self.replica is not None
        try:
            async with asyncio.timeout(self._timeout):
                target = await self.primary.fetchval(_PRIMARY_POSITION)
        except Exception as exc:
            if primary_gone(exc):  # the replica is all there is (ADR 0007)
                _warn("primary unreachable, reading the replica", "postgres", exc)
                _PRIMARY_DOWN.inc()
                return _Choice.REPLICA
            # slow, not down: it may be committing what the replica has not (ADR 0015)
            _warn("primary busy, reading the primary", "postgres", exc)
            _PRIMARY_BUSY.inc()
            return _Choice.PRIMARY_BUSY
        deadline = started + self._max_wait
        pause = 0.001
        try:
            async with asyncio.timeout(self._timeout + self._max_wait):
                while not await self.replica.fetchval(_REPLAYED, target):
                    if time.monotonic() + pause > deadline:
                        _BEHIND.inc()
                        return _Choice.PRIMARY
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.01)
        except Exception as exc:  # replica down or slow: the primary answers
            _warn("replica unusable, reading the primary", "postgres_replica", exc)
            _REPLICA_DOWN.inc()
            return _Choice.PRIMARY
        self._fresh_as_of = max(self._fresh_as_of, started)
        _CURRENT.inc()
        return _Choice.REPLICA
