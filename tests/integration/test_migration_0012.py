"""0012 on a database that already holds rides in several day partitions and in the
default partition: the tracks of rides finished before it stay readable where they are
(no row moves, no rewrite), rides active across it finish with a json track, and the
schema ends up the same as a fresh one's (ADR 0021)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from command_api import repository as repo
from migrations import runner
from query_api.repository import order_track
from shared.domain import Order
from shared.lifecycle import decide_finish
from shared.settings import Settings
from tests.integration.test_migrations import (
    all_migrations,
    fresh_db,
    migrate_before,
    schema_dump,
)
from tests.integration.test_ride_steps_partitions import key, order_at, start, where

__all__ = ["fresh_db"]  # the fixture, imported for this module

DEFAULT_DAY = datetime(2020, 1, 1, 12, tzinfo=UTC)  # before any partition: the default one


def track_of(n: int) -> list[dict[str, float]]:
    return [{"t": float(i), "lat": 55.75 + i / 10_000, "lon": 37.61 + n / 1000} for i in range(40)]


async def finish_with(
    conn: asyncpg.Connection, order: Order, track: list[dict[str, float]]
) -> Order:
    decision = decide_finish(
        started_at=order.started_at,
        finished_at=order.started_at + timedelta(seconds=90),
        price_per_minute=order.price_per_minute,
        price_unlock=order.price_unlock,
        free_ride_seconds=order.free_ride_seconds,
    )
    ended = await repo.finish_ride(
        conn, *key(order), decision, 100, repo.encode_json(track), 60.0, order
    )
    assert ended is not None
    return ended


async def column_types(conn: asyncpg.Connection) -> set[tuple[str, str, str]]:
    """(table, column, type) of every track column of ``orders`` and its partitions."""
    rows = await conn.fetch(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type"
        "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE a.attname LIKE 'track%' AND NOT a.attisdropped AND a.attnum > 0"
        "   AND (c.oid = 'orders'::regclass OR c.oid IN"
        "        (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'orders'::regclass))"
    )
    return {(r["relname"], r["attname"], r["type"]) for r in rows}


async def test_0012_keeps_the_tracks_in_every_partition(
    base_settings: Settings,
    fresh_db: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = base_settings.replace(db={"url": fresh_db("upgrade")})
    await migrate_before(old, "0012", tmp_path, monkeypatch)

    now = datetime.now(UTC)
    days = [now, now - timedelta(days=1), now + timedelta(days=2), DEFAULT_DAY]
    conn = await asyncpg.connect(old.db.url)
    try:
        finished = []  # rides finished with a jsonb track, one a day
        for n, day in enumerate(days):
            ride = await start(conn, order_at(day))
            await finish_with(conn, ride, track_of(n))
            finished.append((ride, track_of(n), await where(conn, ride)))
        riding = [await start(conn, order_at(day)) for day in (now, DEFAULT_DAY)]
        no_track = await start(conn, order_at(now - timedelta(days=1)))
        assert await repo.finish_ride(
            conn,
            *key(no_track),
            decide_finish(
                started_at=no_track.started_at,
                finished_at=no_track.started_at + timedelta(seconds=30),
                price_per_minute=no_track.price_per_minute,
                price_unlock=no_track.price_unlock,
                free_ride_seconds=no_track.free_ride_seconds,
            ),
            0,
            None,
            60.0,
        )
        assert {where for _, _, where in finished} >= {"public.orders_default"}
        assert len({where for _, _, where in finished}) == len(days)
        rows = await conn.fetchval("SELECT count(*) FROM orders")
    finally:
        await conn.close()

    assert await runner.migrate(old) == [n for n in all_migrations() if n[:4] >= "0012"]

    conn = await asyncpg.connect(old.db.url)
    try:
        types = await column_types(conn)
        tables = {table for table, _, _ in types}
        assert {"orders", "orders_default"} <= tables
        assert len(tables) > len(days)
        assert types == {(t, "track", "json") for t in tables} | {
            (t, "track_jsonb", "jsonb") for t in tables
        }
        assert await conn.fetchval("SELECT count(*) FROM orders") == rows
        # the earlier rides: in place, their jsonb track read back unchanged
        for ride, track, table in finished:
            assert await where(conn, ride) == table
            found = await order_track(conn, uuid.UUID(ride.id))
            assert found is not None
            assert found[0] == ride.user_id
            assert json.loads(found[1]) == track
        assert await order_track(conn, uuid.UUID(no_track.id)) == (no_track.user_id, "[]")
        # rides active across the migration finish into the json column, as sent
        for n, ride in enumerate(riding, start=len(days)):
            await finish_with(conn, ride, track_of(n))
            stored = await conn.fetchrow(
                "SELECT track::text AS track, track_jsonb FROM orders WHERE id = $1",
                uuid.UUID(ride.id),
            )
            assert stored is not None
            assert stored["track_jsonb"] is None
            assert stored["track"] == msgspec.json.encode(track_of(n)).decode()
            assert await order_track(conn, uuid.UUID(ride.id)) == (ride.user_id, stored["track"])
        # the receipt inputs' functions, now PL/pgSQL, answer as before
        first = uuid.UUID(finished[0][0].id)
        assert await conn.fetchval("SELECT order_refunds_json($1)", first) == "[]"
        assert await conn.fetchval("SELECT debt_hold_released($1)", first) is False
    finally:
        await conn.close()

    fresh = base_settings.replace(db={"url": fresh_db("fresh")})
    await runner.migrate(fresh)
    assert await schema_dump(old.db.url) == await schema_dump(fresh.db.url)
