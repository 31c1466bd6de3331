"""0004 on a database that already ran 0001-0003 and holds rides: the rides survive, the
new ride steps work on them, and the schema ends up the same as a fresh one's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from command_api import repository as repo
from migrations import runner
from shared.ids import created_at_of, uuid7
from shared.lifecycle import decide_finish
from shared.settings import Settings
from tests.integration.test_migrations import (
    all_migrations,
    fresh_db,
    migrate_before,
    schema_dump,
)

__all__ = ["fresh_db"]  # the fixture, imported for this module


async def test_0004_upgrades_a_database_with_rides(
    base_settings: Settings,
    fresh_db: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = base_settings.replace(db={"url": fresh_db("upgrade")})
    assert await migrate_before(old, "0004", tmp_path, monkeypatch) == 3

    order_id = uuid7()
    created_at = created_at_of(order_id)
    conn = await asyncpg.connect(old.db.url)
    try:  # a ride started and activated by the 0003 functions
        await conn.execute(
            "SELECT start_ride($1, $2, $3, $4, 'u-old', 's-old', 'z', 24, 45, 300, 5, '{}', 1, 60)",
            order_id,
            created_at,
            uuid.uuid4(),
            created_at + timedelta(minutes=5),
        )
        await conn.execute("SELECT activate_ride($1, $2, $2)", order_id, created_at)
    finally:
        await conn.close()

    assert await runner.migrate(old) == [n for n in all_migrations() if n[:4] > "0003"]

    conn = await asyncpg.connect(old.db.url)
    try:
        order = await repo.get_order(conn, order_id, created_at)
        assert order is not None
        assert (order.status, order.price_per_minute, order.deposit) == ("active", 24, 300)
        decision = decide_finish(
            started_at=order.started_at,
            finished_at=datetime.now(UTC) + timedelta(seconds=8),
            price_per_minute=order.price_per_minute,
            price_unlock=order.price_unlock,
            free_ride_seconds=order.free_ride_seconds,
        )
        ended = await repo.finish_ride(
            conn, order_id, created_at, decision, 3_000_000_000, None, 60.0
        )
        assert ended is not None
        assert (ended.status, ended.distance_meters) == ("finished", 3_000_000_000)
    finally:
        await conn.close()

    fresh = base_settings.replace(db={"url": fresh_db("fresh")})
    await runner.migrate(fresh)
    assert await schema_dump(old.db.url) == await schema_dump(fresh.db.url)
