"""The read side end to end: rides through the real command API, the real projector
(``python -m query_api.projector`` as a subprocess) and the real query API (in-process),
on real Postgres, Redis and stubs.

Every assertion is about what the app would see on the query API after a command, or
about Redis and Postgres agreeing; nothing is written by hand on the write side except
``backdate`` (rides take time, tests should not). Waiting is always a bounded poll.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from command_api import worker
from query_api.app import create_app as create_query_app
from shared.lifecycle import ride_charge, ride_cost
from shared.settings import Settings
from shared.views import COMPLETE_MARK, order_key, user_orders_key, user_summary_key
from tests.auth import acting_rider, tokens_for
from tests.conftest import start_process, stop_process
from tests.e2e.conftest import Ids, backdate, eventually, ledger, order_row, set_fault, start
from tests.stores import delete_run_keys, run_keys

Client = AsyncTestClient[Any]
Json = dict[str, Any]

WAIT = 10.0  # every poll gives up after this many seconds
TRACK = [{"t": 1.0, "lat": 55.75, "lon": 37.61}, {"t": 9.0, "lat": 55.751, "lon": 37.611}]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def read_settings(base_settings: Settings, database: str) -> Settings:
    """The run's database and key prefix, and no metrics server (so projectors started
    by other tests never fight over a port)."""
    return base_settings.replace(read={"projector_metrics_port": 0})


class ProjectorProcess:
    """``python -m query_api.projector`` as a subprocess that a test may stop and restart."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = start_process("query_api.projector", self.settings)

    def stop(self) -> int | None:
        """SIGTERM: the projector finishes its batch and exits; returns its exit code."""
        assert self.proc is not None, "not running"
        proc, self.proc = self.proc, None
        stop_process(proc)
        return proc.returncode


@pytest.fixture(scope="module")
def projector(read_settings: Settings) -> Iterator[ProjectorProcess]:
    process = ProjectorProcess(read_settings)
    process.start()
    yield process
    if process.proc is not None:
        process.stop()


@pytest.fixture(scope="module")
async def query(read_settings: Settings, stubs: str) -> AsyncIterator[Client]:
    """The query API app, in-process, with its real lifespan (Redis client, Postgres pool);
    each request carries the token of the user it reads (tests/auth.py)."""
    async with AsyncTestClient(create_query_app(read_settings)) as client:
        acting_rider(client, tokens_for(read_settings))
        yield client


@pytest.fixture(scope="module")
async def redis(read_settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(read_settings.redis.url)
    async with run_keys(client, read_settings.redis.key_prefix):
        yield client


@pytest.fixture
def prefix(read_settings: Settings) -> str:
    return read_settings.redis.key_prefix


# --- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def worker_running(settings: Settings) -> AsyncIterator[None]:
    """The write side's worker (payment retries) running beside the test, from now on."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def finish(api: Client, order_id: str, track: list[Json] | None = None) -> Json:
    response = await api.post(f"/orders/{order_id}/finish", json={"track": track or []})
    assert response.status_code == 200, response.text
    return cast(Json, response.json())


async def screen(query: Client, order_id: str) -> Json:
    response = await query.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    return cast(Json, response.json())


async def shown(query: Client, order_id: str, interval: float = 0.05, **expected: Any) -> Json:
    """The order's screen once every ``expected`` field has its value (bounded wait)."""

    async def check() -> Json:  # an empty (falsy) answer: not yet
        body = await screen(query, order_id)
        return body if all(body[k] == v for k, v in expected.items()) else {}

    try:
        return await eventually(check, timeout=WAIT, interval=interval)
    except AssertionError:
        raise AssertionError(
            f"order {order_id} never showed {expected}: last {await screen(query, order_id)}"
        ) from None


async def summary_shown(query: Client, user_id: str, **expected: Any) -> Json:
    async def check() -> Json:  # an empty (falsy) answer: not yet
        response = await query.get(f"/users/{user_id}/summary")
        if response.status_code != 200:
            return {}
        body = cast(Json, response.json())
        return body if all(body[k] == v for k, v in expected.items()) else {}

    return await eventually(check, timeout=WAIT)


async def history(query: Client, user_id: str) -> list[Json]:
    response = await query.get(f"/users/{user_id}/orders")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    return cast(list[Json], body["items"])


async def redis_version(redis: Redis, prefix: str, order_id: str) -> int | None:
    """The version of the order's view in Redis (None: no view)."""
    raw = await redis.hget(order_key(prefix, order_id), "v")
    return None if raw is None else int(raw)


async def projected(redis: Redis, prefix: str, order_id: str, version: int) -> None:
    """Wait until Redis holds the order's view at ``version`` (read without the query
    API, which would refill a miss from Postgres)."""

    async def check() -> bool:
        return await redis_version(redis, prefix, order_id) == version

    await eventually(check, timeout=WAIT, interval=0.01)


async def pg_version(db: asyncpg.Pool, order_id: str) -> int:
    return int((await order_row(db, order_id))["version"])


async def unpublished(db: asyncpg.Pool, order_ids: list[str]) -> int:
    count = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND order_id = ANY($1::uuid[])",
        [uuid.UUID(i) for i in order_ids],
    )
    return int(count)


async def full_ride(api: Client, db: asyncpg.Pool, rider: str, scooter: str) -> Json:
    """Start, ride a minute and a half, finish with a track; returns the finish answer."""
    order = await start(api, rider, scooter)
    await backdate(db, order["id"], 90)
    return await finish(api, order["id"], TRACK)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fallback_queries() -> float:
    """Order reads the in-process query API answered from Postgres (a Redis miss)."""
    return REGISTRY.get_sample_value("query_fallback_queries_total", {"view": "order"}) or 0.0


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


# --- every command shows up on the query API --------------------------------------------------


async def test_each_command_shows_up_on_the_query_api(
    api: Client, query: Client, projector: ProjectorProcess, db: asyncpg.Pool, ids: Ids
) -> None:
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())

    active = await shown(query, order["id"], status="active", version=order["version"])
    assert active["payment_status"] == "held"
    assert isinstance(active["elapsed_seconds"], int)
    assert isinstance(active["current_amount"], int)
    assert active["total_amount"] is None
    assert active["finished_at"] is None
    for field in ("user_id", "scooter_id", "zone_id", "price_per_minute", "price_unlock"):
        assert active[field] == order[field], field
    assert active["deposit"] == order["deposit"]
    assert moment(active["started_at"]) == moment(order["started_at"])

    await backdate(db, order["id"], 90)
    done = await finish(api, order["id"], TRACK)
    assert (done["status"], done["payment_status"]) == ("finished", "charged")

    final = await shown(query, order["id"], version=done["version"])
    assert (final["status"], final["payment_status"]) == ("finished", "charged")
    assert final["total_amount"] == done["total_amount"]
    assert final["total_amount"] == ride_cost(
        done["duration_seconds"],
        order["price_per_minute"],
        order["price_unlock"],
        order["free_ride_seconds"],
    )
    assert final["distance_meters"] == done["distance_meters"]
    assert final["distance_meters"] == pytest.approx(129, abs=2)
    assert final["duration_seconds"] == final["elapsed_seconds"] == done["duration_seconds"]
    assert final["current_amount"] is None
    assert moment(final["finished_at"]) == moment(done["finished_at"])

    # a second ride of the same rider: the history lists it first
    second = await start(api, rider, ids.scooter())
    await shown(query, second["id"], status="active")
    assert [(o["id"], o["status"]) for o in await history(query, rider)] == [
        (second["id"], "active"),
        (order["id"], "finished"),
    ]
    await backdate(db, second["id"], 30)
    second_done = await finish(api, second["id"])
    await shown(query, second["id"], version=second_done["version"])
    listed = await history(query, rider)
    assert [o["id"] for o in listed] == [second["id"], order["id"]]
    assert [o["status"] for o in listed] == ["finished", "finished"]
    assert [o["total_amount"] for o in listed] == [
        second_done["total_amount"],
        done["total_amount"],
    ]

    summary = await summary_shown(query, rider, rides_count=2)
    assert summary["total_charged"] == done["total_amount"] + second_done["total_amount"]
    assert (summary["debt"], summary["last_payment_status"]) == (0, "charged")
    stored = await db.fetchrow("SELECT * FROM user_summary WHERE user_id = $1", rider)
    assert stored is not None
    assert summary["version"] == stored["version"]
    assert summary["total_charged"] == stored["total_charged"]


async def test_cancelled_ride_shows_released_and_is_not_counted(
    api: Client, query: Client, projector: ProjectorProcess, ids: Ids
) -> None:
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    done = await finish(api, order["id"])  # under the free threshold
    assert (done["status"], done["payment_status"], done["total_amount"]) == (
        "cancelled",
        "released",
        0,
    )
    final = await shown(query, order["id"], version=done["version"])
    assert (final["status"], final["payment_status"], final["total_amount"]) == (
        "cancelled",
        "released",
        0,
    )
    summary = await summary_shown(query, rider, last_payment_status="released")
    assert (summary["rides_count"], summary["total_charged"], summary["debt"]) == (0, 0, 0)
    assert [o["id"] for o in await history(query, rider)] == [order["id"]]


# --- payments: retried charge, debt ---------------------------------------------------------


async def test_charge_retried_by_the_worker_shows_pending_then_charged(
    api: Client,
    query: Client,
    projector: ProjectorProcess,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    reset_faults: None,
    read_settings: Settings,
) -> None:
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 120)
    await set_fault(stubs, "payments", outage=True)
    done = await finish(api, order["id"])
    assert (done["status"], done["payment_status"]) == ("finished", "pending")
    amount = done["total_amount"]
    assert amount > 0

    pending = await shown(query, order["id"], version=done["version"])
    assert (pending["status"], pending["payment_status"]) == ("finished", "pending")
    assert pending["total_amount"] == amount
    summary = await summary_shown(query, rider, rides_count=1)
    assert (summary["total_charged"], summary["debt"]) == (0, 0)

    await set_fault(stubs, "payments", outage=False)
    async with worker_running(read_settings):
        await shown(query, order["id"], payment_status="charged")
    final = await pg_version(db, order["id"])  # reached a poll later if written after (ADR 0027)
    charged = await shown(query, order["id"], version=final, payment_status="charged")
    assert charged["total_amount"] == amount
    summary = await summary_shown(query, rider, total_charged=amount)
    assert (summary["rides_count"], summary["debt"], summary["last_payment_status"]) == (
        1,
        0,
        "charged",
    )
    assert (await ledger(stubs, order["id"]))["charged"] == amount


async def test_charge_payments_declines_shows_as_debt(
    api: Client,
    query: Client,
    projector: ProjectorProcess,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    reset_faults: None,
    read_settings: Settings,
) -> None:
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 200)
    await set_fault(stubs, "payments", decline=True)
    done = await finish(api, order["id"])
    assert done["payment_status"] == "pending"
    amount = done["total_amount"]
    await shown(query, order["id"], version=done["version"], payment_status="pending")

    async with worker_running(read_settings):  # payments declines it to the last try
        await shown(query, order["id"], payment_status="debt")
    # the view reaches the row's last version (the worker may write after the debt; the
    # projector polls, ADR 0027, so that write can be shown a poll later)
    final = await pg_version(db, order["id"])
    debt = await shown(query, order["id"], version=final, payment_status="debt")
    assert debt["status"] == "finished"
    assert debt["total_amount"] == amount
    summary = await summary_shown(query, rider, last_payment_status="debt")
    assert (summary["rides_count"], summary["total_charged"], summary["debt"]) == (1, 0, amount)
    assert [(o["id"], o["payment_status"]) for o in await history(query, rider)] == [
        (order["id"], "debt")
    ]
    assert (await ledger(stubs, order["id"]))["charged"] == 0


# --- running cost -----------------------------------------------------------------------------


async def test_running_cost_of_an_active_ride_follows_the_formula(
    api: Client,
    query: Client,
    projector: ProjectorProcess,
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    ids: Ids,
    read_settings: Settings,
) -> None:
    """At several elapsed times the screen's running cost is ``ride_charge`` with the
    order's prices (the ride cost, capped as the charge is). ``backdate`` changes
    Postgres only, so the order's cached view is evicted before each read: the query
    API then reads the backdated ride."""
    rides = read_settings.rides

    def charge(seconds: int, *prices: int) -> int:
        return ride_charge(
            seconds,
            *prices,
            max_charged_seconds=rides.max_charged_seconds,
            max_cost=rides.max_cost,
        )

    order = await start(api, ids.rider(), ids.scooter())
    prices = (order["price_per_minute"], order["price_unlock"], order["free_ride_seconds"])
    await projected(redis, prefix, order["id"], order["version"])  # no event is in flight

    body = await screen(query, order["id"])
    assert 0 <= body["elapsed_seconds"] <= 2
    assert body["current_amount"] == charge(body["elapsed_seconds"], *prices) == 0

    backdated = 0
    last_amount = 0
    targets = sorted({max(prices[2] - 1, 1), prices[2], 59, 61, 600, 3_600, 86_400})
    for target in targets:
        await backdate(db, order["id"], target - backdated)
        backdated = target
        await redis.delete(order_key(prefix, order["id"]))
        body = await screen(query, order["id"])
        assert body["status"] == "active"
        assert target <= body["elapsed_seconds"] <= target + 2, (target, body)
        assert body["current_amount"] == charge(body["elapsed_seconds"], *prices), body
        assert body["current_amount"] >= last_amount
        last_amount = body["current_amount"]
        if body["elapsed_seconds"] < prices[2]:
            assert body["current_amount"] == 0
        else:
            assert body["current_amount"] >= prices[1]

    done = await finish(api, order["id"])
    assert done["total_amount"] == charge(done["duration_seconds"], *prices)
    assert done["total_amount"] >= last_amount
    final = await shown(query, order["id"], version=done["version"])
    assert final["total_amount"] == done["total_amount"]
    assert final["current_amount"] is None


# --- projection lag ---------------------------------------------------------------------------


async def test_projection_lag_under_light_load(
    api: Client,
    query: Client,
    projector: ProjectorProcess,
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    ids: Ids,
) -> None:
    """40 rides started at ~20/s. Per ride: start answer → the query API shows it
    active, and finish answer → the query API shows it finished and charged. The
    second one can only come from the projector (the active view is cached by then);
    the first may be served by the query API's Postgres fallback. Plus the projector's
    own lag, outbox commit → published (after Redis had the writes)."""
    rides = 40
    riders = [(ids.rider(), ids.scooter()) for _ in range(rides)]
    warm = await start(api, ids.rider(), ids.scooter())  # the projector is up and polling
    await projected(redis, prefix, warm["id"], warm["version"])
    loop = asyncio.get_running_loop()
    fallbacks_before = fallback_queries()

    async def one(i: int, rider: str, scooter: str) -> tuple[str, float, float]:
        await asyncio.sleep(i / 20)
        order = await start(api, rider, scooter)
        started = loop.time()
        await shown(query, order["id"], interval=0.005, status="active")
        start_lag = loop.time() - started
        await backdate(db, order["id"], 60)
        done = await finish(api, order["id"])
        finished = loop.time()
        await shown(query, order["id"], interval=0.005, version=done["version"])
        finish_lag = loop.time() - finished
        return order["id"], start_lag, finish_lag

    results = await asyncio.gather(*(one(i, r, s) for i, (r, s) in enumerate(riders)))
    order_ids = [r[0] for r in results]
    fallbacks = fallback_queries() - fallbacks_before

    async def all_published() -> bool:
        return await unpublished(db, order_ids) == 0

    await eventually(all_published, timeout=WAIT)
    outbox_lags = sorted(
        await db.fetchval(
            "SELECT array_agg(extract(epoch FROM published_at - created_at)::float8)"
            " FROM outbox WHERE order_id = ANY($1::uuid[])",
            [uuid.UUID(i) for i in order_ids],
        )
    )
    measured = {
        "start → query API shows active": sorted(r[1] for r in results),
        "finish → query API shows finished+charged": sorted(r[2] for r in results),
        "outbox commit → projected (per event)": outbox_lags,
    }
    print(f"\nread-side lag over {rides} rides at ~20 rides/s:")
    for name, lags in measured.items():
        print(
            f"  {name}: p50 {percentile(lags, 0.5) * 1000:.1f} ms,"
            f" p99 {percentile(lags, 0.99) * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
            f" (n={len(lags)})"
        )
    print(f"  order reads answered from Postgres (not yet projected): {fallbacks:.0f}")
    for name, lags in measured.items():
        assert percentile(lags, 0.99) < 1.0, name


# --- Redis flushed, projector stopped ---------------------------------------------------------


async def test_flushed_redis_is_answered_from_postgres_and_repopulated(
    api: Client,
    query: Client,
    projector: ProjectorProcess,
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    read_settings: Settings,
    ids: Ids,
) -> None:
    rider = ids.rider()
    first = await full_ride(api, db, rider, ids.scooter())
    second = await start(api, rider, ids.scooter())
    await projected(redis, prefix, first["id"], first["version"])
    await projected(redis, prefix, second["id"], second["version"])
    await summary_shown(query, rider, rides_count=1)

    assert await delete_run_keys(redis, prefix) > 0
    keys = (
        order_key(prefix, first["id"]),
        order_key(prefix, second["id"]),
        user_orders_key(prefix, rider),
        user_summary_key(prefix, rider),
    )
    assert await redis.exists(*keys) == 0

    # answered from Postgres, exactly as before the flush
    one = await screen(query, first["id"])
    assert (one["status"], one["payment_status"], one["version"]) == (
        "finished",
        "charged",
        first["version"],
    )
    assert one["total_amount"] == first["total_amount"]
    two = await screen(query, second["id"])
    assert (two["status"], two["payment_status"]) == ("active", "held")
    assert two["version"] == second["version"]
    assert [o["id"] for o in await history(query, rider)] == [second["id"], first["id"]]
    summary = await summary_shown(query, rider)
    assert (summary["rides_count"], summary["total_charged"]) == (1, first["total_amount"])

    # ... and repopulated at Postgres' versions
    assert await redis_version(redis, prefix, first["id"]) == await pg_version(db, first["id"])
    assert await redis_version(redis, prefix, second["id"]) == await pg_version(db, second["id"])
    raw_members = await redis.zrange(user_orders_key(prefix, rider), 0, -1)
    members = [m.decode() for m in cast(list[bytes], raw_members)]
    assert members == [COMPLETE_MARK, first["id"], second["id"]]
    assert await redis.exists(user_summary_key(prefix, rider)) == 1
    # a refilled active view expires (a stale refill is bounded); a finished one too
    active_ttl = await redis.ttl(order_key(prefix, second["id"]))
    assert 0 < active_ttl <= read_settings.read.refill_ttl_seconds
    assert await redis.ttl(order_key(prefix, first["id"])) > 0

    # the projector's later writes still land on the refilled views
    await backdate(db, second["id"], 60)
    done = await finish(api, second["id"])
    final = await shown(query, second["id"], version=done["version"])
    assert (final["status"], final["payment_status"]) == ("finished", "charged")
    await summary_shown(query, rider, rides_count=2)


async def test_stopped_projector_catches_up_and_views_never_lag_behind_postgres(
    api: Client,
    query: Client,
    projector: ProjectorProcess,
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    ids: Ids,
) -> None:
    cached = await start(api, ids.rider(), ids.scooter())
    await projected(redis, prefix, cached["id"], cached["version"])
    assert projector.stop() == 0  # SIGTERM: a clean exit

    try:
        # rides go on while nothing projects
        await backdate(db, cached["id"], 90)
        cached_done = await finish(api, cached["id"])
        riders = [ids.rider() for _ in range(3)]
        finished = [await full_ride(api, db, r, ids.scooter()) for r in riders[:2]]
        active = await start(api, riders[2], ids.scooter())
        order_ids = [cached["id"], *(o["id"] for o in finished), active["id"]]
        assert await unpublished(db, order_ids) == 2 + 2 * 3 + 1

        # the cached view is behind (eventual consistency), never ahead of Postgres;
        # views that were not cached are read from Postgres and refilled at its version
        stale = await screen(query, cached["id"])
        assert (stale["status"], stale["version"]) == ("active", cached["version"])
        assert stale["version"] < cached_done["version"]
        seen = {cached["id"]: stale["version"]}
        for order in [*finished, active]:
            body = await screen(query, order["id"])
            assert body["version"] == order["version"] == await pg_version(db, order["id"])
            seen[order["id"]] = body["version"]
    finally:
        projector.start()

    async def caught_up() -> bool:
        done = True
        for oid in order_ids:
            body = await screen(query, oid)
            current = await pg_version(db, oid)
            # never back in time (the replayed old events must not undo the refills),
            # never ahead of Postgres
            assert seen[oid] <= body["version"] <= current, (oid, seen[oid], body, current)
            seen[oid] = body["version"]
            done = done and body["version"] == current
        return done

    await eventually(caught_up, timeout=WAIT)

    async def all_published() -> bool:
        return await unpublished(db, order_ids) == 0

    await eventually(all_published, timeout=WAIT)
    for oid in order_ids:
        row = await order_row(db, oid)
        assert await redis_version(redis, prefix, oid) == row["version"]
        body = await screen(query, oid)
        assert (body["status"], body["payment_status"], body["version"]) == (
            row["status"],
            row["payment_status"],
            row["version"],
        )
    assert (await screen(query, cached["id"]))["total_amount"] == cached_done["total_amount"]
    for rider in riders:
        stored = await db.fetchrow("SELECT * FROM user_summary WHERE user_id = $1", rider)
        assert stored is not None
        summary = await summary_shown(query, rider, version=stored["version"])
        assert (summary["rides_count"], summary["total_charged"]) == (
            stored["rides_count"],
            stored["total_charged"],
        )
