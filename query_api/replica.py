"""Which Postgres a fallback read goes to, so that a lagging replica never shows a screen
older than one already shown (docs/adr/0007-read-replica-consistency.md).

The rule: a read may be answered by the replica only when the replica has replayed all
the WAL the primary had written when the read began. Every change a screen (or a
command's answer) could have shown before that moment is then visible on the replica.
Otherwise the read goes to the primary. A read the replica fails after it was chosen
(cancelled by a recovery conflict, the replica gone) is read again on the primary
(:meth:`ReadRouter.read`), so a hot standby never turns an answerable read into an error.

The check costs two trivial statements that touch no table (``pg_current_wal_insert_lsn()``
on the primary, ``pg_last_wal_replay_lsn()`` on the replica) and is shared: a check that
*started* after a read began answers for that read, so under load one check in flight
serves every miss that arrived before it. A replica a few milliseconds behind is waited
for, up to ``replica_max_wait_seconds``, before giving up on it.
"""

from __future__ import annotations

import asyncio
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


class ReadRouter:
    """Chooses the pool of each fallback read: ``primary`` alone when no replica is set."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None,
        max_wait_seconds: float = 0.05,
        check_timeout_seconds: float = 0.5,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self._max_wait = max_wait_seconds
        self._timeout = check_timeout_seconds
        self._fresh_as_of = float("-inf")  # the replica had replayed the primary as of then
        self._check: tuple[float, asyncio.Future[bool]] | None = None

    async def pool(self) -> asyncpg.Pool:
        """The pool a read that begins now must use (see the module's rule)."""
        if self.replica is None:
            return self.primary
        began = time.monotonic()
        if self._fresh_as_of >= began or await self._replica_current(began):
            _ON_REPLICA.inc()
            return self.replica
        _ON_PRIMARY.inc()
        return self.primary

    async def read(self, query: Callable[[asyncpg.Pool], Awaitable[R]]) -> R:
        """Run ``query`` on :meth:`pool`'s choice; a read the replica fails with
        :data:`REPLICA_FAILED` (a timeout aside) is run again on the primary. The
        primary's errors pass."""
        pool = await self.pool()
        if pool is self.primary:
            return await query(pool)
        try:
            return await query(pool)
        except REPLICA_FAILED as exc:
            if isinstance(exc, TimeoutError):  # a slow statement: the primary's would wait
                raise  # as long again on a busy box (503)
            log.warning("replica read failed (%r): reading the primary", exc)
            REPLICA_READ_FAILURES.inc()
            return await query(self.primary)

    async def _replica_current(self, began: float) -> bool:
        """Join the check in flight when it started after ``began``, else start one."""
        check = self._check
        if check is None or check[0] < began:
            started = time.monotonic()
            future = asyncio.ensure_future(self._probe(started))
            check = self._check = (started, future)
        return await asyncio.shield(check[1])

    async def _probe(self, started: float) -> bool:
        """Has the replica replayed what the primary had written at ``started``?"""
        assert self.replica is not None
        try:
            async with asyncio.timeout(self._timeout):
                target = await self.primary.fetchval(_PRIMARY_POSITION)
        except Exception as exc:  # primary down: the replica is all there is (ADR 0007)
            log.warning("primary unreachable (%r): reading the replica as it is", exc)
            _PRIMARY_DOWN.inc()
            return True
        deadline = started + self._max_wait
        pause = 0.001
        try:
            async with asyncio.timeout(self._timeout + self._max_wait):
                while not await self.replica.fetchval(_REPLAYED, target):
                    if time.monotonic() + pause > deadline:
                        _BEHIND.inc()
                        return False
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.01)
        except Exception as exc:  # replica down or slow: the primary answers
            log.warning("replica unusable (%r): reading the primary", exc)
            _REPLICA_DOWN.inc()
            return False
        self._fresh_as_of = max(self._fresh_as_of, started)
        _CURRENT.inc()
        return True
