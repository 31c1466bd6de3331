"""Fixtures for driving the command API in-process against real Postgres and stubs."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from command_api import rides, worker
from command_api.app import create_app
from command_api.composition import open_deps
from command_api.external import ExternalServices
from shared.ids import created_at_of, parse_order_id
from shared.settings import Settings
from tests.auth import Tokens, acting_rider, tokens_for
from tests.conftest import ADMIN
from tests.private_stores import PrivatePostgres, PrivateRedis
from tests.stores import postgres_pool

T = TypeVar("T")


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
    database: str, stubs: str, base_settings: Settings, tokens: Tokens
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The command API app, in-process, with its real lifespan (pool, HTTP client); each
    request carries the token of the rider it is for (tests/auth.py)."""
    async with AsyncTestClient(create_app(base_settings)) as client:
        acting_rider(client, tokens)
        yield client


def command_client(settings: Settings) -> AsyncTestClient[Any]:
    """A client of a command API app made with ``settings``, acting as each request's rider."""
    client: AsyncTestClient[Any] = AsyncTestClient(create_app(settings))
    acting_rider(client, tokens_for(settings))
    return client


@pytest.fixture(scope="session")
async def db(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with postgres_pool(database) as pool:
        yield pool


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
        response = await client.get(f"{stubs}/ledger", params={"order_id": order_id}, headers=ADMIN)
    if response.status_code == 404:
        return {"held": 0, "charged": 0, "released": 0, "entries": []}
    body: dict[str, Any] = response.json()
    return body


async def set_fault(stubs: str, service: str, **fault: Any) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{stubs}/admin/faults", json={"service": service, **fault}, headers=ADMIN
        )
        response.raise_for_status()


# --- failure and worker tests (tests/e2e/test_failures.py, tests/e2e/test_worker.py) ----------


@pytest.fixture
def reset_configs(stubs: str) -> Iterator[None]:
    """Put the stubs' configs back to their defaults before and after a test that changes them."""
    httpx.post(f"{stubs}/admin/configs/reset", headers=ADMIN, timeout=5).raise_for_status()
    yield
    httpx.post(f"{stubs}/admin/configs/reset", headers=ADMIN, timeout=5).raise_for_status()


def command_deps(
    settings: Settings,
    pool: asyncpg.Pool,
    services: type[ExternalServices] = ExternalServices,
) -> AbstractAsyncContextManager[rides.Deps]:
    """The commands' and the worker's dependencies from the composition root, on the
    test's pool (own HTTP client)."""
    return open_deps(settings, pool=pool, services=services)


@pytest.fixture
async def worker_deps(
    base_settings: Settings, db: asyncpg.Pool, stubs: str
) -> AsyncIterator[rides.Deps]:
    """Deps to drive the worker one step at a time (``worker.process_due_operations``)."""
    async with command_deps(base_settings, db) as deps:
        yield deps


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns a truthy value (which is returned) or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"not true within {timeout}s: last result {result!r}")
        await asyncio.sleep(interval)


async def order_row(db: asyncpg.Pool, order_id: str | uuid.UUID) -> asyncpg.Record:
    oid = order_id if isinstance(order_id, uuid.UUID) else parse_order_id(order_id)
    assert oid is not None
    row = await db.fetchrow(
        "SELECT * FROM orders WHERE id = $1 AND created_at = $2", oid, created_at_of(oid)
    )
    assert row is not None, f"no order {order_id}"
    return row


async def payment_op(db: asyncpg.Pool, order_id: str | uuid.UUID, kind: str) -> asyncpg.Record:
    oid = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(order_id)
    row = await db.fetchrow(
        "SELECT * FROM payment_operations WHERE order_id = $1 AND kind = $2", oid, kind
    )
    assert row is not None, f"no {kind} operation for {order_id}"
    return row


async def make_due(db: asyncpg.Pool, order_id: str | uuid.UUID, kind: str) -> None:
    """Make a pending payment operation due now (its backoff has passed)."""
    oid = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(order_id)
    await db.execute(
        "UPDATE payment_operations SET next_attempt_at = now()"
        " WHERE order_id = $1 AND kind = $2 AND state = 'pending'",
        oid,
        kind,
    )


async def summary_row(db: asyncpg.Pool, user_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM user_summary WHERE user_id = $1", user_id)
    assert row is not None, f"no user_summary for {user_id}"
    return row


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A Postgres server of the test's own (tests.private_stores), to stop and start."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis server of the test's own (tests.private_stores), to stop and start."""
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.stop()
