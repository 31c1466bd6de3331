"""The projector: outbox events → Redis projections (``python -m query_api.projector``).

At-least-once: a batch of outbox rows is claimed with ``FOR UPDATE SKIP LOCKED`` (so
several projectors share the work, none twice), projected to Redis in one pipeline,
and marked ``published_at`` in the same transaction only after Redis accepted the
writes. The transaction stays open across wake-ups and commits every
``projector_commit_interval_seconds`` (ADR 0016): a crash before the commit leaves its
rows unpublished and a later run projects them again, which the versioned script makes
harmless. A batch's Redis writes are one script call over one pipelined connection on a
single Redis (``projection.apply``, ADR 0023). Polls (ADR 0027; the outbox no longer
NOTIFYs): after a batch that found events it pauses ``projector_batch_interval_seconds``
and claims again; an idle projector looks for an unpublished row every
``projector_poll_seconds`` with one indexed query, outside any transaction. Runs on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg
import msgspec
import uvloop
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction
from prometheus_client import start_http_server
from redis.exceptions import ConnectionError as RedisConnectionError

from query_api import projection, repository
from query_api.metrics import BAD_EVENTS, EVENT_LAG, PROJECTED, PROJECTOR_ERRORS, PROJECTOR_LAG
from query_api.projection import Write
from query_api.read_connection import ReadConnection
from query_api.stores import RedisClient, connect_redis
from shared.events import Event, event_decoder
from shared.infra.db import close_pool, create_pool
from shared.infra.failures import (
    FailureError,
    RetryLog,
    explain,
    explained_exit,
    port_in_use_message,
)
from shared.lifecycle import is_ended, is_riding
from shared.receipt import ReceiptInputs, receipt_of
from shared.settings import Settings, get_settings
from shared.views import created_at_ms, order_view_of, summary_view_of

log = logging.getLogger("query_api.projector")
Connection = asyncpg.Connection | PoolConnectionProxy

_CLAIM = """
SELECT id, created_at, payload::text AS payload FROM outbox
 WHERE published_at IS NULL
 ORDER BY id
 LIMIT $1
 FOR UPDATE SKIP LOCKED
"""
# Marks the batch published and answers the age of the oldest row still unpublished
# (the lag gauge) in the same statement: one round trip and no transaction of its own.
# clock_timestamp(), not now(): published_at is when Redis had the writes. The SELECT
# sees the rows as they were before the UPDATE, so it leaves out the batch itself.
_MARK = """
WITH marked AS (
    UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])
)
SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox
 WHERE published_at IS NULL AND id <> ALL($1::bigint[]) ORDER BY id LIMIT 1
"""
_OLDEST = """
SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM outbox
 WHERE published_at IS NULL ORDER BY id LIMIT 1
"""
# the longest wait between attempts while Postgres or Redis is down (0.2, 0.4, 0.8, 1, 1 …)
_BACKOFF_CAP_SECONDS = 1.0
# a view written late (replay, catch-up) still lives this long
_LATE_TTL_FLOOR = 60


def writes_for(
    event: Event,
    settings: Settings,
    now: datetime,
    receipts: Mapping[str, ReceiptInputs] | None = None,
) -> list[Write]:
    """The projection writes of one event: order view (with the receipt of an ended
    ride, built from ``receipts``' inputs of its order), user's recent list, summary."""
    prefix = settings.redis.key_prefix
    inputs = (receipts or {}).get(event.order.id)
    order = order_view_of(event.order, None if inputs is None else receipt_of(event.order, inputs))
    ttl = (
        0
        if is_riding(order.status)
        else projection.finished_ttl(
            order.finished_at, now, settings.read.finished_view_ttl_seconds, _LATE_TTL_FLOOR
        )
    )
    writes = [
        projection.put_order(prefix, order, ttl),
        projection.add_recent(
            prefix,
            order.user_id,
            [(order.id, created_at_ms(order.created_at))],
            keep=settings.read.user_recent_orders,
            ttl=settings.read.finished_view_ttl_seconds,
            complete=False,
        ),
    ]
    if event.summary is not None:
        writes.append(projection.put_summary(prefix, summary_view_of(event.summary)))
    return writes


async def _project(
    conn: Connection,
    redis: RedisClient,
    settings: Settings,
    connection: ReadConnection | None = None,
) -> int:
    """Claim, project and mark one batch inside the caller's transaction; returns how many
    events it held. Sets the lag gauge (age of the oldest event still unpublished, as this
    transaction sees the outbox) and counts the events once Redis accepted their writes.
    The writes go over ``connection`` when given (``projection.apply``)."""
    rows = await conn.fetch(_CLAIM, settings.read.projector_batch_size)
    if not rows:  # nothing unclaimed; rows another projector holds still count
        PROJECTOR_LAG.set(await conn.fetchval(_OLDEST) or 0.0)
        return 0
    now = datetime.now(UTC)
    events: list[Event] = []
    for row in rows:
        try:
            events.append(event_decoder.decode(row["payload"]))
        except msgspec.DecodeError:
            # never blocks the outbox; the row stays for inspection, marked published
            BAD_EVENTS.inc()
            log.error("outbox row %s has an undecodable payload", row["id"])
    # receipts of ended rides: what they are built from, in one query per batch
    ended = {uuid.UUID(e.order.id) for e in events if is_ended(e.order.status)}
    receipts = await repository.receipt_inputs_of(conn, list(ended)) if ended else {}
    writes: list[Write] = []
    for event in events:
        writes += writes_for(event, settings, now, receipts)
    await projection.apply(redis, writes, connection)
    lag = await conn.fetchval(_MARK, [row["id"] for row in rows])
    PROJECTOR_LAG.set(lag or 0.0)
    done = datetime.now(UTC)
    for row in rows:
        EVENT_LAG.observe(max(0.0, (done - row["created_at"]).total_seconds()))
    PROJECTED.inc(len(rows))
    return len(rows)


async def project_batch(conn: Connection, redis: RedisClient, settings: Settings) -> int:
    """Claim, project and mark one batch in one transaction; returns how many events it
    held. Also sets the lag gauge (age of the oldest event still unpublished)."""
    async with conn.transaction():
        return await _project(conn, redis, settings)


async def drain_in(
    conn: Connection,
    redis: RedisClient,
    settings: Settings,
    connection: ReadConnection | None = None,
) -> int:
    """Project until a batch comes back short of ``projector_batch_size``, all inside the
    caller's open transaction on ``conn`` (the marks become visible when it commits);
    returns the events projected. See ``drain`` for when it stops. Redis is written over
    ``connection`` when given, else ``redis``."""
    total = 0
    size = settings.read.projector_batch_size
    while True:
        count = await _project(conn, redis, settings, connection)
        total += count
        if count < size:
            return total


async def drain(pool: asyncpg.Pool, redis: RedisClient, settings: Settings) -> int:
    """Project until a batch comes back short of ``projector_batch_size`` (everything
    committed before its claim was in it, or held by another projector); returns the
    events projected. Rows committed during the last batch are not waited for: the
    running projector's next poll finds them (one transaction per batch, none for an
    empty look when the last batch was short)."""
    total = 0
    size = settings.read.projector_batch_size
    while True:
        async with pool.acquire() as conn:
            count = await project_batch(conn, redis, settings)
        total += count
        if count < size:
            return total


class MarkingTransaction:
    """The projector's open transaction, in which published marks wait to be committed
    (ADR 0016): batches of several wake-ups are claimed and marked in it, and it commits
    once it is ``commit_seconds`` old (or at a clean stop). Until then the claimed rows
    stay locked (``FOR UPDATE``), so other projectors skip them; a crash or an error
    rolls it back, and the rows are projected again (at-least-once, ADR 0004)."""

    def __init__(self, pool: asyncpg.Pool, commit_seconds: float) -> None:
        self._pool = pool
        self._commit_seconds = commit_seconds
        self._conn: PoolConnectionProxy | None = None
        self._tx: Transaction | None = None
        self._opened = 0.0
        self.marked = 0  # events marked in the open transaction

    async def connection(self) -> PoolConnectionProxy:
        """The open transaction's connection; begins one if none is open."""
        if self._conn is None:
            conn = await self._pool.acquire()
            try:
                tx = conn.transaction()
                await tx.start()
            except BaseException:
                await self._pool.release(conn)
                raise
            self._conn, self._tx, self._opened = conn, tx, time.monotonic()
        return self._conn

    def due_in(self) -> float | None:
        """Seconds until the open transaction is due to commit (≤ 0: now); None if none
        is open."""
        if self._conn is None:
            return None
        return self._opened + self._commit_seconds - time.monotonic()

    async def settle(self) -> None:
        """Commit if due; end a transaction that marked nothing at once (it holds no
        claim: every batch it claimed was marked or it would have failed)."""
        due = self.due_in()
        if due is not None and (due <= 0 or not self.marked):
            await self.end()

    async def end(self) -> None:
        """Commit the marks (roll back an open transaction that marked nothing)."""
        conn, tx, marked = self._conn, self._tx, self.marked
        if conn is None or tx is None:
            return
        self._conn, self._tx, self.marked = None, None, 0
        try:
            if marked:
                await tx.commit()
            else:
                await tx.rollback()
        except BaseException:
            await self._release(conn, tx)
            raise
        await self._pool.release(conn)

    async def abandon(self) -> None:
        """Roll back after an error: the rows it marked are projected again."""
        conn, tx = self._conn, self._tx
        self._conn, self._tx, self.marked = None, None, 0
        if conn is not None and tx is not None:
            await self._release(conn, tx)

    async def _release(self, conn: PoolConnectionProxy, tx: Transaction) -> None:
        with contextlib.suppress(Exception):  # a broken link is closed by the release
            if not conn.is_closed():
                await tx.rollback()
        with contextlib.suppress(Exception):
            await self._pool.release(conn, timeout=5.0)


class Projector:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        settings = self._settings
        read = settings.read
        timeout = max(5.0, settings.redis.timeout_seconds)
        redis = connect_redis(settings, timeout=timeout)
        # the writes over one pipelined connection on a single Redis (ADR 0023)
        connection = (
            None
            if settings.redis.cluster or not ReadConnection.supports(settings.redis.url)
            else ReadConnection(settings.redis.url, timeout_seconds=timeout, max_pending=64)
        )
        pool = await create_pool(
            settings.db.url,
            min_size=1,
            max_size=2,
            connect_timeout=settings.db.connect_timeout_seconds,
        )
        marks = MarkingTransaction(pool, read.projector_commit_interval_seconds)
        failures = 0
        retry_log = RetryLog(log, "projection")
        try:
            while not self._stop.is_set():
                try:
                    if marks.due_in() is None and not await _pending(pool):
                        count = 0  # idle: one query, no transaction (ADR 0027)
                    else:
                        conn = await marks.connection()
                        count = await drain_in(conn, redis, settings, connection)
                        marks.marked += count
                        await marks.settle()  # commits once due (ADR 0016)
                    failures = 0
                    retry_log.succeeded()
                except Exception as exc:  # Redis or Postgres down: rows stay unpublished
                    await marks.abandon()  # the marks not yet committed are projected again
                    if isinstance(exc, RedisConnectionError):  # a master may have failed over
                        await projection.forget_topology(redis)
                    PROJECTOR_ERRORS.inc()
                    failures += 1
                    reason = explain(exc, settings.db.url, settings.redis.url)
                    if reason is None:  # not the machine around us: keep the traceback
                        log.exception("projection failed (attempt %d); retrying", failures)
                    else:
                        retry_log.failed(reason)
                    await self._sleep(min(0.1 * 2**failures, _BACKOFF_CAP_SECONDS))
                    continue
                if count:
                    log.debug("projected %d events", count)
                    # busy: let the next batch gather what arrives meanwhile (issue 13)
                    await self._sleep(read.projector_batch_interval_seconds)
                    continue
                # nothing new: the next poll, or the open transaction's commit if sooner
                due = marks.due_in()
                poll = read.projector_poll_seconds
                await self._sleep(poll if due is None else max(0.0, min(poll, due)))
        finally:
            with contextlib.suppress(Exception):  # a clean stop commits what Redis has
                await marks.end()
            await marks.abandon()
            await close_pool(pool)
            if connection is not None:
                await connection.aclose()
            await redis.aclose()

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless stopped."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)


async def _pending(pool: asyncpg.Pool) -> bool:
    """Whether the outbox holds an unpublished row (committed, or claimed by another
    projector): the idle projector's poll, one indexed query outside a transaction
    (``outbox_unpublished``). Sets the lag gauge to that row's age (0 if none)."""
    age = await pool.fetchval(_OLDEST)
    PROJECTOR_LAG.set(age or 0.0)
    return age is not None


async def _main(settings: Settings) -> None:
    projector = Projector(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, projector.stop)
    # imported once the handlers are in: structlog's import takes a moment on a busy box
    from shared.infra.logs import configure_logging

    configure_logging(settings)
    await projector.run()


def main() -> None:
    settings = get_settings()
    port = settings.read.projector_metrics_port
    with explained_exit("projector", settings.db.url, settings.redis.url):
        if port:
            try:
                start_http_server(port, addr=settings.serving.query_host)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise FailureError(
                    port_in_use_message(
                        settings.serving.query_host,
                        port,
                        "projector /metrics",
                        "SCOOTERS_PROJECTOR_METRICS_PORT (0 turns it off)",
                    )
                ) from None
        uvloop.run(_main(settings))


if __name__ == "__main__":
    main()
