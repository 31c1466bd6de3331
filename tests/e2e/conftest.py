"""Fixtures for driving the command API in-process against real Postgres and stubs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from command_api import worker
from command_api.app import create_app
from shared.ids import created_at_of, parse_order_id
from shared.settings import Settings


@dataclass
class Ids:
    """Hands out scooters and riders no other test uses (the stubs' data set is shared)."""

    stubs: str
    used: set[str] = field(default_factory=set)
    rng: random.Random = field(default_factory=lambda: random.Random())

    def scooter(self) -> str:
        while True:
            sid = f"scooter-{self.rng.randint(21, 10_000)}"
            if sid not in self.used:
                self.used.add(sid)
                return sid

    def rider(self, **wanted: Any) -> str:
        """A rider without current debt (and with the ``wanted`` profile fields)."""
        while True:
            uid = f"user-{self.rng.randint(21, 100_000)}"
            if uid in self.used:
                continue
            profile = httpx.get(f"{self.stubs}/user-profile", params={"id": uid}).json()
            if profile["current_debt"] == 0 and all(profile[k] == v for k, v in wanted.items()):
                self.used.add(uid)
                return uid


@pytest.fixture(scope="session")
def ids(stubs: str) -> Ids:
    return Ids(stubs)


@pytest.fixture(scope="session")
async def api(
    database: str, stubs: str, base_settings: Settings
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The command API app, in-process, with its real lifespan (pool, HTTP client)."""
    async with AsyncTestClient(create_app(base_settings)) as client:
        yield client


@pytest.fixture(scope="session")
async def db(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture
async def running_worker(base_settings: Settings, database: str) -> AsyncIterator[None]:
    """The worker loop (payment retries, maintenance) running beside the test."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(base_settings, stop))
    yield
    stop.set()
    await task


async def new_offer(api: AsyncTestClient[Any], user_id: str, scooter_id: str) -> dict[str, Any]:
    response = await api.post("/offers", json={"user_id": user_id, "scooter_id": scooter_id})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def start(api: AsyncTestClient[Any], user_id: str, scooter_id: str) -> dict[str, Any]:
    offer = await new_offer(api, user_id, scooter_id)
    response = await api.post("/orders", json={"offer_token": offer["token"]})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def backdate(db: asyncpg.Pool, order_id: str, seconds: float) -> None:
    """Pretend the ride started ``seconds`` earlier (rides take time; tests should not)."""
    oid = parse_order_id(order_id)
    assert oid is not None
    await db.execute(
        "UPDATE orders SET started_at = started_at - make_interval(secs => $3)"
        " WHERE id = $1 AND created_at = $2",
        oid,
        created_at_of(oid),
        seconds,
    )


async def ledger(stubs: str, order_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stubs}/ledger", params={"order_id": order_id})
    if response.status_code == 404:
        return {"held": 0, "charged": 0, "released": 0, "entries": []}
    body: dict[str, Any] = response.json()
    return body


async def set_fault(stubs: str, service: str, **fault: Any) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stubs}/admin/faults", json={"service": service, **fault})
        response.raise_for_status()
