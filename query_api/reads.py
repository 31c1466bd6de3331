"""The read model: views from Redis, Postgres when Redis misses or is down.

A miss is refilled through the same versioned script the projector uses, so a refill
racing with the projector can never overwrite a newer view. A refilled view that is
not done yet gets ``refill_ttl_seconds``. With a replica configured, every Postgres read
goes through :class:`~query_api.replica.ReadRouter`, which sends it to the primary while
the replica has not replayed what the primary had when the read began (ADR 0007), so a
refill is never older than what a screen already showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar, cast

import asyncpg
import msgspec

from query_api import projection, repository
from query_api.metrics import CACHE_HITS, CACHE_MISSES, FALLBACKS
from query_api.projection import Write
from query_api.read_connection import ReadConnection
from query_api.replica import ReadRouter
from query_api.stores import RedisClient, RedisGate, RedisUnavailable, SingleFlight
from shared.errors import DependencyUnavailable
from shared.infra.outages import POSTGRES_DOWN
from shared.lifecycle import is_riding
from shared.settings import Settings
from shared.views import (
    COMPLETE_MARK,
    OrderView,
    UserSummaryView,
    created_at_ms,
    moment_of_ms,
    order_key,
    order_view_decoder,
    summary_view_decoder,
    user_orders_key,
    user_summary_key,
)

log = logging.getLogger("query_api.reads")
_ORDER_HITS, _ORDER_MISSES = CACHE_HITS.labels("order"), CACHE_MISSES.labels("order")
R = TypeVar("R")

Entry = tuple[int, str]  # (created_at ms, order id): a user's order in history order


class UserOrders(msgspec.Struct, frozen=True):
    items: list[OrderView]
    next_entry: Entry | None  # where the next page starts, None on the last page


class ServedVersions:
    """The versions this process last served from Postgres, per Redis key (bounded, LRU).

    A Redis view older than one of them is stale and is read again (ADR 0007): this
    happens when Redis could not take the refill (down, or a master failed over before
    replicating it) and the projector has not caught up yet. Without it a screen shown
    from Postgres during a Redis outage would go back in time when Redis answers again.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._versions: OrderedDict[str, int] = OrderedDict()

    def note(self, key: str, version: int) -> None:
        self._versions[key] = max(version, self._versions.get(key, version))
        self._versions.move_to_end(key)
        if len(self._versions) > self._size:
            self._versions.popitem(last=False)

    def stale(self, key: str, version: int) -> bool:
        """Whether a Redis view at ``version`` is older than what this process served."""
        if not self._versions:  # the usual case: one truth test on the hot path
            return False
        served = self._versions.get(key)
        if served is None:
            return False
        if version >= served:
            del self._versions[key]  # Redis has caught up with it
            return False
        return True


class Reads:
    """The read model of the query API.

    ``db`` is the primary's pool; ``replica`` (optional) a hot standby's, read when it
    is current (ADR 0007). Postgres down raises ``DependencyUnavailable`` (503).
    """

    def __init__(
        self,
        settings: Settings,
        redis: RedisClient,
        db: asyncpg.Pool,
        replica: asyncpg.Pool | None = None,
    ) -> None:
        self._settings = settings
        self.max_charged_seconds = settings.rides.max_charged_seconds
        self.max_cost = settings.rides.max_cost
        self._prefix = settings.redis.key_prefix
        self._redis = redis
        # the hot reads (a view's HGET) over one pipelined connection, on a single Redis
        self._reader = (
            None
            if settings.redis.cluster or not ReadConnection.supports(settings.redis.url)
            else ReadConnection(
                settings.redis.url,
                timeout_seconds=settings.redis.timeout_seconds,
                max_pending=settings.redis.max_connections,
            )
        )
        self.router = ReadRouter(
            db,
            replica,
            settings.db.replica_max_wait_seconds,
            primary_deadline_seconds=settings.db.command_timeout_seconds,
        )
        self.gate = RedisGate(settings.redis.retry_seconds)
        self._flights = SingleFlight()
        self._served = ServedVersions()

    # --- one order ----------------------------------------------------------------------

    async def order(self, order_id: uuid.UUID) -> OrderView | None:
        """The order's view; None when there is no such (shown) order."""
        key = order_key(self._prefix, str(order_id))
        try:
            raw = await self.gate.call(lambda: self._hget(key))
        except RedisUnavailable:
            raw = None
        view = _decode_order(raw)
        if view is not None and not self._served.stale(key, view.version):
            _ORDER_HITS.inc()
            return view
        _ORDER_MISSES.inc()
        return await self._flights.run(key, lambda: self._refill_order(order_id))

    async def _refill_order(self, order_id: uuid.UUID) -> OrderView | None:
        FALLBACKS.labels("order").inc()
        view = await self._query(lambda db: repository.order_by_id(db, order_id))
        if view is not None:
            self._served.note(order_key(self._prefix, view.id), view.version)
            await self._write([self._put_order(view)])
        return view

    # --- a user's summary ---------------------------------------------------------------

    async def summary(self, user_id: str) -> UserSummaryView | None:
        """The user's summary; None for a user never seen."""
        key = user_summary_key(self._prefix, user_id)
        try:
            raw = await self.gate.call(lambda: self._hget(key))
        except RedisUnavailable:
            raw = None
        if raw is not None:
            try:
                view = summary_view_decoder.decode(raw)
            except msgspec.DecodeError:
                log.warning(
                    "undecodable view, refilling",
                    extra={"service": "redis", "view": "summary", "key": key},
                )
            else:
                if not self._served.stale(key, view.version):
                    CACHE_HITS.labels("summary").inc()
                    return view
        CACHE_MISSES.labels("summary").inc()
        return await self._flights.run(key, lambda: self._refill_summary(user_id))

    async def _refill_summary(self, user_id: str) -> UserSummaryView | None:
        FALLBACKS.labels("summary").inc()
        view = await self._query(lambda db: repository.summary(db, user_id))
        if view is not None:
            self._served.note(user_summary_key(self._prefix, user_id), view.version)
            await self._write([projection.put_summary(self._prefix, view)])
        return view

    # --- a user's history -----------------------------------------------------------------

    async def user_orders(self, user_id: str, limit: int, after: Entry | None) -> UserOrders:
        """A page of the user's orders, newest first, strictly after ``after``.

        The newest ``user_recent_orders`` come from the Redis list (ids) and views;
        the rest, and everything while Redis is down, from Postgres.
        """
        recent = await self._recent(user_id)
        if recent is None:
            return await self._page_from_postgres(user_id, limit, after, [])
        entries = [e for e in recent if after is None or e < after]
        if len(entries) > limit:
            page = entries[:limit]
            return UserOrders(await self._views(page), page[-1])
        views = await self._views(entries)
        if len(recent) < self._settings.read.user_recent_orders:
            return UserOrders(views, None)  # the list holds all of the user's orders
        boundary = entries[-1] if entries else (after or recent[-1])
        return await self._page_from_postgres(user_id, limit - len(entries), boundary, views)

    async def _page_from_postgres(
        self, user_id: str, need: int, after: Entry | None, head: list[OrderView]
    ) -> UserOrders:
        FALLBACKS.labels("history").inc()
        if after is None:
            before = (datetime.max.replace(tzinfo=UTC), repository.MAX_UUID)
        else:
            before = (moment_of_ms(after[0]), uuid.UUID(after[1]))
        rows = await self._query(lambda db: repository.user_page(db, user_id, before, need + 1))
        items = head + rows[:need]
        more = len(rows) > need
        return UserOrders(items, _entry(items[-1]) if more and items else None)

    async def _recent(self, user_id: str) -> list[Entry] | None:
        """The user's recent list, newest first, refilled when it is not complete;
        None when Redis is down."""
        key = user_orders_key(self._prefix, user_id)
        try:
            raw = await self.gate.call(lambda: self._zmembers(key))
        except RedisUnavailable:
            return None
        members = {m.decode(): score for m, score in raw}
        if members.pop(COMPLETE_MARK, None) is not None:
            CACHE_HITS.labels("history").inc()
        else:
            CACHE_MISSES.labels("history").inc()
            members.update(await self._flights.run(key, lambda: self._refill_recent(user_id)))
        entries = sorted(((int(ms), oid) for oid, ms in members.items()), reverse=True)
        return entries[: self._settings.read.user_recent_orders]

    async def _refill_recent(self, user_id: str) -> dict[str, int]:
        FALLBACKS.labels("history").inc()
        keep = self._settings.read.user_recent_orders
        rows = await self._query(lambda db: repository.user_recent(db, user_id, keep))
        found = {oid: created_at_ms(at) for oid, at in rows}
        if found:
            await self._write(
                [
                    projection.add_recent(
                        self._prefix,
                        user_id,
                        found.items(),
                        keep=keep,
                        ttl=self._settings.read.finished_view_ttl_seconds,
                        complete=True,
                    )
                ]
            )
        return found

    async def _views(self, entries: Sequence[Entry]) -> list[OrderView]:
        """Views of ``entries`` in their order: one pipeline, then one query for misses."""
        ids = [oid for _, oid in entries]
        raws: list[bytes | None] = [None] * len(ids)
        with contextlib.suppress(RedisUnavailable):
            raws = await self.gate.call(lambda: self._hget_many(ids))
        found = {
            oid: v
            for oid, raw in zip(ids, raws, strict=True)
            if (v := _decode_order(raw)) is not None
            and not self._served.stale(order_key(self._prefix, oid), v.version)
        }
        CACHE_HITS.labels("order").inc(len(found))
        missing = [uuid.UUID(oid) for oid in ids if oid not in found]
        if missing:
            CACHE_MISSES.labels("order").inc(len(missing))
            FALLBACKS.labels("order").inc()
            loaded = await self._query(lambda db: repository.orders_by_ids(db, missing))
            for view in loaded.values():
                self._served.note(order_key(self._prefix, view.id), view.version)
            await self._write([self._put_order(v) for v in loaded.values()])
            found.update(loaded)
        return [found[oid] for oid in ids if oid in found]

    async def _hget(self, key: str) -> bytes | None:
        if self._reader is not None:
            return await self._reader.hget(key, "d")
        raw = await self._redis.hget(key, "d")
        return cast(bytes | None, raw)

    async def aclose(self) -> None:
        """Close the read connection (the clients handed in are their owner's to close)."""
        if self._reader is not None:
            await self._reader.aclose()

    async def _zmembers(self, key: str) -> list[tuple[bytes, float]]:
        if self._reader is not None:
            return await self._reader.zrevrange_with_scores(key)
        raw = await self._redis.zrevrange(key, 0, -1, withscores=True)
        return cast(list[tuple[bytes, float]], raw)

    async def _hget_many(self, ids: Sequence[str]) -> list[bytes | None]:
        if self._reader is not None:  # written together: one pipeline on the connection
            reader, prefix = self._reader, self._prefix
            replies = await asyncio.gather(
                *(reader.hget(order_key(prefix, oid), "d") for oid in ids),
                return_exceptions=True,
            )
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return cast(list[bytes | None], replies)
        pipe = self._redis.pipeline(transaction=False)
        for oid in ids:
            pipe.hget(order_key(self._prefix, oid), "d")
        result: list[bytes | None] = await pipe.execute()
        return result

    # --- plumbing -------------------------------------------------------------------------

    def _put_order(self, view: OrderView) -> Write:
        if is_riding(view.status):
            ttl = self._settings.read.refill_ttl_seconds
        else:
            ttl = projection.finished_ttl(
                view.finished_at,
                datetime.now(UTC),
                self._settings.read.finished_view_ttl_seconds,
                floor=self._settings.read.refill_ttl_seconds,
            )
        return projection.put_order(self._prefix, view, ttl)

    async def _write(self, writes: list[Write]) -> None:
        """Refill Redis; a failure only costs the next reader another query."""
        if not writes:
            return
        try:
            await self.gate.call(lambda: projection.apply(self._redis, writes))
        except RedisUnavailable:
            log.info("refills skipped", extra={"service": "redis", "writes": len(writes)})

    # --- receipt and track: Postgres only (opened once per ride, never projected) ----------

    async def order_from_postgres(self, order_id: uuid.UUID) -> OrderView | None:
        """The order's view (with its receipt) as Postgres has it now; None when not shown."""
        return await self._query(lambda db: repository.order_by_id(db, order_id))

    async def order_track(self, order_id: uuid.UUID) -> tuple[str, str] | None:
        """The order's rider and GPS track (JSON text); None when not shown."""
        return await self._query(lambda db: repository.order_track(db, order_id))

    async def _query(self, query: Callable[[asyncpg.Pool], Awaitable[R]]) -> R:
        try:
            return await self.router.read(query)
        except POSTGRES_DOWN as exc:
            raise DependencyUnavailable("postgres") from exc


def _decode_order(raw: bytes | None) -> OrderView | None:
    if raw is None:
        return None
    try:
        return order_view_decoder.decode(raw)
    except msgspec.DecodeError:
        log.warning("undecodable view, refilling", extra={"service": "redis", "view": "order"})
        return None


def _entry(view: OrderView) -> Entry:
    return created_at_ms(view.created_at), view.id
