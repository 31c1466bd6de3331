"""Abandoned rides end themselves: the worker (real loop, real Postgres and stubs) ends a
ride active past a short limit as of that limit, charges it at most the ride cost cap,
and leaves younger rides alone (docs/rides-gone-wrong.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from command_api import worker
from shared.lifecycle import ride_cost
from shared.settings import Settings
from tests.e2e.conftest import Ids, backdate, command_client, eventually, ledger, order_row, start

LIMIT = 60  # seconds: the short abandoned-ride setting of these tests
CAP = 500  # the ride cost cap of these tests


@pytest.fixture
async def short_limit_worker(base_settings: Settings, database: str) -> AsyncIterator[None]:
    settings = base_settings.replace(rides={"abandoned_after_seconds": LIMIT, "max_cost": CAP})
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(settings, stop))
    yield
    stop.set()
    await task


async def ended(db: asyncpg.Pool, order_id: str) -> asyncpg.Record:
    async def check() -> asyncpg.Record | None:
        row = await order_row(db, order_id)
        return row if row["status"] != "active" and row["payment_status"] == "charged" else None

    row = await eventually(check, timeout=15)
    assert row is not None
    return row


@pytest.mark.usefixtures("short_limit_worker")
async def test_an_abandoned_ride_ends_at_the_limit_and_young_rides_do_not(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids, stubs: str
) -> None:
    abandoned = await start(api, ids.rider(trusted=False), ids.scooter())
    young = await start(api, ids.rider(), ids.scooter())
    await backdate(db, young["id"], LIMIT / 2)
    await backdate(db, abandoned["id"], 3 * 86_400)  # the app crashed three days ago

    row = await ended(db, abandoned["id"])
    assert row["duration_seconds"] == LIMIT  # not three days
    assert row["finished_at"] == row["started_at"] + timedelta(seconds=LIMIT)
    expected = min(
        ride_cost(LIMIT, abandoned["price_per_minute"], abandoned["price_unlock"], 5), CAP
    )
    assert row["total_amount"] == expected
    assert (await ledger(stubs, abandoned["id"]))["charged"] == expected
    await asyncio.sleep(0.5)  # a few more worker rounds
    assert (await order_row(db, young["id"]))["status"] == "active"


async def test_the_cost_cap_bounds_a_rider_finish(
    base_settings: Settings, db: asyncpg.Pool, ids: Ids, stubs: str, database: str
) -> None:
    settings = base_settings.replace(rides={"max_cost": CAP})
    async with command_client(settings) as api:
        order = await start(api, ids.rider(), ids.scooter())
        await backdate(db, order["id"], 86_400)
        response = await api.post(f"/orders/{order['id']}/finish", json={})
    assert response.status_code == 200, response.text
    assert response.json()["total_amount"] == CAP
    assert (await ledger(stubs, order["id"]))["charged"] == CAP
