"""The query API in-process (Litestar AsyncTestClient) on real Postgres and Redis."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from query_api.app import create_app
from query_api.projector import drain
from query_api.stores import RedisGate, RedisUnavailable, connect_redis
from shared.ids import uuid7
from shared.lifecycle import ride_charge, ride_cost
from shared.settings import Settings
from shared.views import order_key, user_orders_key
from tests.auth import acting_rider, tokens_for
from tests.integration.test_projector import WriteSide, new_user
from tests.ports import free_port

Client = AsyncTestClient[Any]


@pytest.fixture(scope="module")
def settings(base_settings: Settings, database: str) -> Settings:
    # a short recent list so that history pages cross from Redis into Postgres
    return base_settings.replace(read={"user_recent_orders": 5}, redis={"retry_seconds": 0.2})


def query_client(settings: Settings) -> Client:
    """A client of a query API app made with ``settings``; each request carries the token
    of the user it reads (an order not started through the command API: support's)."""
    client: Client = AsyncTestClient(app=create_app(settings))
    acting_rider(client, tokens_for(settings))
    return client


@pytest.fixture(scope="module")
async def client(settings: Settings, stubs: str) -> AsyncIterator[Client]:
    async with query_client(settings) as test_client:
        yield test_client


@pytest.fixture
def write(pool: asyncpg.Pool) -> WriteSide:
    return WriteSide(pool)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def project(pool: asyncpg.Pool, redis: Redis, settings: Settings) -> None:
    await drain(pool, redis, settings)


# --- the ride screen ----------------------------------------------------------------------


async def test_order_screen_through_a_ride(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    order = await write.start(new_user(), started_at=datetime.now(UTC) - timedelta(seconds=80))
    await project(pool, redis, settings)
    body = (await client.get(f"/orders/{order.id}")).json()
    assert (body["status"], body["payment_status"], body["total_amount"]) == (
        "active",
        "held",
        None,
    )
    assert body["current_amount"] == ride_cost(body["elapsed_seconds"], 24, 45, 5)

    finished = await write.finish(order, distance_meters=2_500)
    await project(pool, redis, settings)
    body = (await client.get(f"/orders/{order.id}")).json()
    assert (body["status"], body["payment_status"], body["current_amount"]) == (
        "finished",
        "pending",
        None,
    )
    assert body["total_amount"] == finished.total_amount
    assert body["distance_meters"] == 2_500
    assert body["elapsed_seconds"] == finished.duration_seconds

    await write.settle(finished)
    await project(pool, redis, settings)
    body = (await client.get(f"/orders/{order.id}")).json()
    assert (body["payment_status"], body["version"]) == ("charged", 3)


async def test_the_screen_lane_answers_as_the_litestar_route(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    """``/orders/{id}`` is answered by the lane before routing (ADR 0011), ``/orders/{id}/``
    by the Litestar handler: the same answer, request id and metrics either way."""
    order = await write.settle(await write.finish(await write.start(new_user())))
    await project(pool, redis, settings)
    labels = {"app": "query_api", "method": "GET", "route": "/orders/{order_id}"}
    answered = metric("http_request_duration_seconds_count", **labels, status="200")
    lane = await client.get(f"/orders/{order.id}", headers={"X-Request-ID": "lane-1"})
    routed = await client.get(f"/orders/{order.id}/", headers={"X-Request-ID": "route-1"})
    for response, request_id in ((lane, "lane-1"), (routed, "route-1")):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == request_id
    assert lane.content == routed.content
    assert lane.json()["payment_status"] == "charged"
    assert metric("http_request_duration_seconds_count", **labels, status="200") == answered + 2

    refused = metric("http_request_duration_seconds_count", **labels, status="401")
    unsigned = await client.get(f"/orders/{order.id}", headers={"Authorization": "Basic x"})
    assert unsigned.status_code == 401
    assert unsigned.headers["www-authenticate"] == "Bearer"
    assert metric("http_request_duration_seconds_count", **labels, status="401") == refused + 1


async def test_the_history_lane_answers_as_the_litestar_route(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    """A plain ``/users/{id}/orders`` is answered by the lane (ADR 0028); with a query
    parameter it does not take (or a trailing slash) by Litestar: the same answer, request
    id and metrics either way, page after page."""
    user = new_user()
    for _ in range(3):
        await write.start(user)
    await project(pool, redis, settings)
    labels = {"app": "query_api", "method": "GET", "route": "/users/{user_id}/orders"}
    answered = metric("http_request_duration_seconds_count", **labels, status="200")
    lane = await client.get(f"/users/{user}/orders?limit=2", headers={"X-Request-ID": "h-1"})
    routed = await client.get(f"/users/{user}/orders?limit=2&x=1", headers={"X-Request-ID": "h-2"})
    for response, request_id in ((lane, "h-1"), (routed, "h-2")):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == request_id
    assert lane.content == routed.content
    cursor = lane.json()["next_cursor"]
    assert cursor
    lane_next = await client.get(f"/users/{user}/orders?limit=2&cursor={cursor}")
    routed_next = await client.get(f"/users/{user}/orders/?limit=2&cursor={cursor}")
    assert lane_next.status_code == routed_next.status_code == 200
    assert lane_next.content == routed_next.content
    assert len(lane_next.json()["items"]) == 1
    assert metric("http_request_duration_seconds_count", **labels, status="200") == answered + 4


@pytest.mark.parametrize("seconds", [2, 10, 65, 3_600, 86_400])
async def test_running_cost_follows_the_formula(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: Redis,
    client: Client,
    write: WriteSide,
    seconds: int,
) -> None:
    order = await write.start(
        new_user(),
        started_at=datetime.now(UTC) - timedelta(seconds=seconds),
        price_per_minute=37,
        price_unlock=50,
    )
    await project(pool, redis, settings)
    body = (await client.get(f"/orders/{order.id}")).json()
    assert seconds <= body["elapsed_seconds"] <= seconds + 2
    assert body["current_amount"] == ride_charge(
        body["elapsed_seconds"],
        37,
        50,
        5,
        max_charged_seconds=settings.rides.max_charged_seconds,
        max_cost=settings.rides.max_cost,
    )
    assert body["current_amount"] <= settings.rides.max_cost
    if seconds < 5:
        assert body["current_amount"] == 0


async def test_unprojected_order_is_read_from_postgres(client: Client, write: WriteSide) -> None:
    order = await write.start(new_user())  # the projector has not run
    response = await client.get(f"/orders/{order.id}")
    assert response.status_code == 200
    assert response.json()["status"] == "active"


async def test_projector_keeps_an_active_view_that_a_refill_wrote_first(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    order = await write.start(new_user())
    assert (await client.get(f"/orders/{order.id}")).status_code == 200  # refilled, with a TTL
    key = order_key(settings.redis.key_prefix, order.id)
    assert await redis.ttl(key) > 0
    await project(pool, redis, settings)  # the same version, from the projector
    assert await redis.ttl(key) == -1  # an active ride's view does not expire


async def test_flushed_key_repopulates_once_for_a_burst(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    order = await write.start(new_user())
    await project(pool, redis, settings)
    key = order_key(settings.redis.key_prefix, order.id)
    await redis.delete(key)
    fallbacks = metric("query_fallback_queries_total", view="order")

    responses = await asyncio.gather(*(client.get(f"/orders/{order.id}") for _ in range(30)))

    assert {r.status_code for r in responses} == {200}
    assert metric("query_fallback_queries_total", view="order") - fallbacks == 1
    assert await redis.exists(key)
    # refilled, not projected: an active view refilled from Postgres lives a bounded time
    assert 0 < await redis.ttl(key) <= settings.read.refill_ttl_seconds
    hits = metric("query_cache_hits_total", view="order")
    assert (await client.get(f"/orders/{order.id}")).status_code == 200
    assert metric("query_cache_hits_total", view="order") == hits + 1


async def test_history_refills_views_missing_from_redis(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    user = new_user()
    orders = [await write.start(user) for _ in range(3)]
    await project(pool, redis, settings)
    # the list is in Redis, but two of its views were evicted
    await redis.delete(*(order_key(settings.redis.key_prefix, o.id) for o in orders[:2]))

    response = await client.get(f"/users/{user}/orders", params={"limit": 10})

    assert response.status_code == 200, response.text
    # newest first by (created_at, id); UUIDv7 ids sort the same way, even within one ms
    assert [item["id"] for item in response.json()["items"]] == sorted(
        (o.id for o in orders), reverse=True
    )
    for order in orders:
        assert await redis.exists(order_key(settings.redis.key_prefix, order.id))


async def test_more_reads_than_redis_connections_do_not_take_redis_for_down(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, write: WriteSide
) -> None:
    order = await write.start(new_user())
    await project(pool, redis, settings)
    key = order_key(settings.redis.key_prefix, order.id)
    # a generous socket timeout: the two reads that get a connection must not time out on
    # a busy machine (they did in CI, leaving no read that reached Redis); the subject here
    # is the full pool, not a slow Redis
    narrow = connect_redis(settings.replace(redis={"max_connections": 2}), timeout=5.0)
    gate = RedisGate(retry_seconds=60, trip_after_timeouts=1_000)
    failures = metric("query_redis_failures_total")
    try:
        views = await asyncio.gather(
            *(gate.call(lambda: narrow.hget(key, "d")) for _ in range(200)),
            return_exceptions=True,
        )
    finally:
        await narrow.aclose()
    assert any(isinstance(v, RedisUnavailable) for v in views)  # those read Postgres
    assert any(isinstance(v, bytes) for v in views)
    assert not gate.degraded  # Redis itself was never taken for down
    assert metric("query_redis_failures_total") == failures


async def test_hidden_orders_are_not_found(client: Client, write: WriteSide) -> None:
    for status in ("starting", "rejected"):
        order = await write.start(new_user(), status=status)
        response = await client.get(f"/orders/{order.id}")
        assert response.status_code == 404
        assert response.json()["code"] == "order_not_found"


# --- history and summary --------------------------------------------------------------------


async def test_history_pages_are_stable_while_orders_arrive(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    user = new_user()
    base = datetime.now(UTC) - timedelta(hours=3)
    existing = [await write.start(user, started_at=base + timedelta(minutes=i)) for i in range(13)]
    await project(pool, redis, settings)
    expected = [o.id for o in reversed(existing)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(f"/users/{user}/orders", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        pages += 1
        if pages == 2:  # new rides arrive, and the list is evicted, mid-pagination
            for _ in range(3):
                await write.start(user)
            await project(pool, redis, settings)
        if pages == 3:
            await redis.delete(user_orders_key(settings.redis.key_prefix, user))
        if cursor is None:
            break
    assert seen == expected  # no duplicates, nothing skipped, newest first

    first = (await client.get(f"/users/{user}/orders", params={"limit": 100})).json()
    assert len(first["items"]) == 16
    assert first["next_cursor"] is None


async def test_summary(
    settings: Settings, pool: asyncpg.Pool, redis: Redis, client: Client, write: WriteSide
) -> None:
    user = new_user()
    order = await write.start(user, started_at=datetime.now(UTC) - timedelta(minutes=2))
    settled = await write.settle(await write.finish(order))
    await project(pool, redis, settings)
    body = (await client.get(f"/users/{user}/summary")).json()
    assert body == {
        "user_id": user,
        "rides_count": 1,
        "total_charged": settled.total_amount,
        "debt": 0,
        "last_payment_status": "charged",
        "version": 3,
    }


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/orders/{uuid7()}", 404, "order_not_found"),
        ("/orders/not-a-uuid", 404, "order_not_found"),
        (f"/orders/{uuid.uuid4()}", 404, "order_not_found"),
        ("/users/nobody-at-all/summary", 404, "user_not_found"),
        ("/users/u1/orders?limit=0", 422, "invalid_parameter"),
        ("/users/u1/orders?limit=101", 422, "invalid_parameter"),
        ("/users/u1/orders?limit=abc", 422, "invalid_parameter"),
        ("/users/u1/orders?cursor=%%%", 422, "invalid_parameter"),
        ("/users/u1/orders?cursor=bm90LWEtY3Vyc29y", 422, "invalid_parameter"),
        (f"/users/{'x' * 200}/summary", 422, "invalid_parameter"),
        ("/no/such/route", 404, "not_found"),
    ],
)
async def test_errors_are_problem_details(
    client: Client, path: str, status: int, code: str
) -> None:
    response = await client.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()


async def test_history_of_a_rider_without_rides_is_an_empty_page(client: Client) -> None:
    response = await client.get("/users/nobody-at-all/orders")
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_health_and_metrics(settings: Settings, stubs: str) -> None:
    """/metrics is served on the internal metrics port, not on the API's."""
    port = free_port()
    async with query_client(settings.replace(serving={"query_metrics_port": port})) as client:
        assert (await client.get("/health/live")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "redis": "up", "postgres": "up"}
        assert (await client.get("/metrics")).status_code == 404
        async with httpx.AsyncClient() as internal:
            text = (await internal.get(f"http://127.0.0.1:{port}/metrics")).text
    for name in (
        "query_cache_hits_total",
        "query_cache_misses_total",
        "query_fallback_queries_total",
        'http_request_duration_seconds_count{app="query_api",method="GET",route="/health/live"',
    ):
        assert name in text


# --- Redis down -----------------------------------------------------------------------------


@pytest.fixture
def own_redis_port() -> Iterator[int]:
    port = free_port()
    yield port
    subprocess.run(
        ["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, check=False
    )


def start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            == b"PONG"
        ):
            return proc
        subprocess.run(["sleep", "0.05"], check=True)
    raise TimeoutError("redis-server did not start")


async def test_redis_down_serves_postgres_and_recovers(
    settings: Settings, write: WriteSide, own_redis_port: int
) -> None:
    own = settings.replace(redis={"url": f"redis://127.0.0.1:{own_redis_port}/0"})
    server = start_redis(own_redis_port)
    user = new_user()
    order = await write.start(user)
    async with query_client(own) as api:
        try:
            assert (await api.get(f"/orders/{order.id}")).status_code == 200  # miss, refill
            hits = metric("query_cache_hits_total", view="order")
            assert (await api.get(f"/orders/{order.id}")).status_code == 200
            assert metric("query_cache_hits_total", view="order") == hits + 1

            server.kill()
            server.wait()
            for path in (f"/orders/{order.id}", f"/users/{user}/orders", f"/users/{user}/summary"):
                response = await api.get(path)
                assert response.status_code == 200, (path, response.text)
            assert (await api.get(f"/orders/{order.id}")).json()["id"] == order.id
            ready = await api.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json() == {"status": "degraded", "redis": "down", "postgres": "up"}

            server = start_redis(own_redis_port)  # empty, scripts gone: refill reloads them
            await asyncio.sleep(settings.redis.retry_seconds + 0.1)
            assert (await api.get(f"/orders/{order.id}")).status_code == 200  # miss, refill
            hits = metric("query_cache_hits_total", view="order")
            assert (await api.get(f"/orders/{order.id}")).status_code == 200
            assert metric("query_cache_hits_total", view="order") == hits + 1
            assert (await api.get("/health/ready")).json()["status"] == "ok"
        finally:
            server.kill()
            server.wait()
