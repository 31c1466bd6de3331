"""Rebuild projections from Postgres: ``python -m query_api.rebuild [--since ISO] [--until ISO]``.

Walks the orders created in the range (all when no bounds) in keyset pages, and for
every page writes the order views, the recent lists and summaries of the users in it,
through the same versioned scripts as the projector. Safe while traffic flows: a
rebuilt view never replaces a newer one, and lists are merged, never replaced.
Finished orders whose view would already have expired are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from datetime import UTC, datetime

import asyncpg

from query_api import projection, repository
from query_api.projection import Write
from query_api.stores import RedisClient, connect_redis
from shared.infra.db import create_pool
from shared.lifecycle import is_riding
from shared.settings import Settings, get_settings
from shared.views import OrderView, created_at_ms

log = logging.getLogger("query_api.rebuild")

PAGE = 1_000
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
_END = datetime(9999, 1, 1, tzinfo=UTC)


def _order_write(settings: Settings, view: OrderView, now: datetime) -> Write | None:
    if is_riding(view.status):
        return projection.put_order(settings.redis.key_prefix, view, 0)
    ttl = projection.finished_ttl(view.finished_at, now, settings.read.finished_view_ttl_seconds, 0)
    return projection.put_order(settings.redis.key_prefix, view, ttl) if ttl > 0 else None


async def _user_writes(db: asyncpg.Pool, settings: Settings, user_ids: list[str]) -> list[Write]:
    keep = settings.read.user_recent_orders
    writes = [
        projection.add_recent(
            settings.redis.key_prefix,
            user_id,
            [(oid, created_at_ms(at)) for oid, at in recent],
            keep=keep,
            ttl=settings.read.finished_view_ttl_seconds,
            complete=True,
        )
        for user_id, recent in (await repository.users_recent(db, user_ids, keep)).items()
        if recent
    ]
    writes += [
        projection.put_summary(settings.redis.key_prefix, s)
        for s in await repository.summaries(db, user_ids)
    ]
    return writes


async def rebuild(
    db: asyncpg.Pool,
    redis: RedisClient,
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Rebuild every projection of orders created in ``[since, until)``; returns the
    number of orders visited."""
    low, high = since or _BEGINNING, until or _END
    after = (low, repository.MIN_UUID)
    await projection.load_scripts(redis)
    visited = 0
    while True:
        views = await repository.range_page(db, low, high, after, PAGE)
        if not views:
            return visited
        now = datetime.now(UTC)
        writes = [w for v in views if (w := _order_write(settings, v, now)) is not None]
        writes += await _user_writes(db, settings, sorted({v.user_id for v in views}))
        await projection.apply(redis, writes)
        visited += len(views)
        last = views[-1]
        after = (last.created_at, uuid.UUID(last.id))
        log.info("rebuilt %d orders (up to %s)", visited, last.created_at.isoformat())


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _main(settings: Settings, since: datetime | None, until: datetime | None) -> int:
    redis = connect_redis(settings, timeout=10.0)
    db = await create_pool(
        settings.db.url,
        min_size=1,
        max_size=2,
        connect_timeout=settings.db.connect_timeout_seconds,
    )
    assert db is not None
    try:
        return await rebuild(db, redis, settings, since, until)
    finally:
        await db.close()
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m query_api.rebuild", description=__doc__)
    parser.add_argument("--since", type=_moment, help="orders created at or after (ISO 8601)")
    parser.add_argument("--until", type=_moment, help="orders created before (ISO 8601)")
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    count = asyncio.run(_main(settings, args.since, args.until))
    print(f"rebuild: {count} orders projected")


if __name__ == "__main__":
    main()
