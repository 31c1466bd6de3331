"""The two load tests: complete rides on the command side, order screens on the query side."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from shared.settings import Settings
from shared.views import order_key
from stubs import DataSet, StubSettings
from tests.load.bench import bench_stub_settings
from tests.load.client import Connection, Pool
from tests.load.harness import (
    PG_STATS_DELAY_SECONDS,
    CpuMeter,
    NextRead,
    Recorder,
    closed_loop,
    cpu_ms_per,
    cpu_share,
    latency_table,
    open_loop,
    percentile,
    pg_per,
    pg_sample,
    read_loop,
    rss_bytes,
)

_json = msgspec.json.Encoder()


class _Created(msgspec.Struct):
    id: str


class _Offer(msgspec.Struct):
    token: str


class _Token(msgspec.Struct):
    access_token: str


_offer_decoder = msgspec.json.Decoder(_Offer)
_token_decoder = msgspec.json.Decoder(_Token)
_created_decoder = msgspec.json.Decoder(_Created)


def track_for(z_bytes: int, seed: int = 1) -> list[dict[str, float]]:
    """A GPS track that makes the stored order about ``z_bytes``.

    A noisy random walk (as real fixes are), so it does not compress much better in
    Postgres than a real track would; about 56 bytes of JSON a point.
    """
    rng = random.Random(seed)
    points = max(0, (z_bytes - 700) // 56)
    t, lat, lon = time.time(), 55.75, 37.61
    track = []
    for _ in range(points):
        t += rng.uniform(0.8, 1.2)
        lat += rng.gauss(0, 2e-5)
        lon += rng.gauss(0, 2e-5)
        track.append({"t": round(t, 3), "lat": round(lat, 6), "lon": round(lon, 6)})
    return track


def riders_and_scooters(
    stub: StubSettings, riders_wanted: int | None = None
) -> tuple[deque[str], deque[str]]:
    """Riders without debt (the first ``riders_wanted``) and all scooters, shuffled."""
    data = DataSet(
        seed=stub.seed,
        scooters=stub.scooters,
        zones=stub.zones,
        users=stub.users,
    )
    riders = [
        f"user-{n}"
        for n in range(1, stub.users + 1)
        if (u := data.user(f"user-{n}")) is not None and u.current_debt == 0
    ]
    scooters = [f"scooter-{n}" for n in range(1, stub.scooters + 1)]
    rng = random.Random(7)
    rng.shuffle(riders)
    rng.shuffle(scooters)
    return deque(riders[:riders_wanted]), deque(scooters)


async def sign_in(settings: Settings, riders: list[str], concurrency: int = 16) -> dict[str, str]:
    """A bearer token from the identity stub for each rider, as a header line.

    Called before the measured window: the APIs verify every request inside it.
    """
    pool = Pool("127.0.0.1", bench_stub_settings(settings).port)
    headers: dict[str, str] = {}
    todo = deque(riders)

    async def fetch() -> None:
        while todo:
            rider = todo.popleft()
            status, body = await pool.request(
                "POST", "/auth/token", _json.encode({"sub": rider, "roles": ["rider"]})
            )
            if status != 200:
                raise RuntimeError(f"identity stub answered {status} for {rider}: {body[:200]!r}")
            headers[rider] = f"Authorization: Bearer {_token_decoder.decode(body).access_token}\r\n"

    try:
        await asyncio.gather(*(fetch() for _ in range(concurrency)))
    finally:
        pool.close()
    return headers


@dataclass
class RideContext:
    settings: Settings
    command: Pool
    query: Pool
    riders: deque[str]
    scooters: deque[str]
    finish_body: bytes
    ride_seconds: float
    lag_sample_every: int
    recorder: Recorder = field(default_factory=Recorder)
    lags: list[float] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    started: int = 0
    started_orders: list[str] = field(default_factory=list)  # for the soak's viewers
    started_riders: list[str] = field(default_factory=list)
    auth: dict[str, str] = field(default_factory=dict)  # rider -> Authorization header line
    owner: dict[str, str] = field(default_factory=dict)  # order id -> its rider


async def ride_context(
    settings: Settings, z_bytes: int, ride_seconds: float, lag_sample_every: int, riders: int
) -> RideContext:
    """``riders`` signed-in riders and all scooters, connections to both APIs, the finish
    body for Z. Riders are reused in turn (one ride at a time each), so ``riders`` must
    exceed the rides in flight."""
    pool, scooters = riders_and_scooters(bench_stub_settings(settings), riders)
    return RideContext(
        settings=settings,
        command=Pool("127.0.0.1", settings.serving.command_port),
        query=Pool("127.0.0.1", settings.serving.query_port),
        riders=pool,
        scooters=scooters,
        finish_body=_json.encode({"track": track_for(z_bytes)}),
        ride_seconds=ride_seconds,
        lag_sample_every=lag_sample_every,
        auth=await sign_in(settings, list(pool)),
    )


async def ride(ctx: RideContext) -> None:
    """offer → order → ride → finish, for a rider and a scooter nobody else uses now."""
    if not ctx.riders or not ctx.scooters:
        ctx.recorder.errors["generator: out of riders/scooters"] += 1
        return
    rider, scooter = ctx.riders.popleft(), ctx.scooters.popleft()
    finished = False
    rec = ctx.recorder
    auth = ctx.auth[rider]
    try:
        body = _json.encode({"scooter_id": scooter})
        answer = await rec.call("POST /offers", ctx.command.request("POST", "/offers", body, auth))
        if answer is None:
            finished = True  # nothing was started
            return
        token = _offer_decoder.decode(answer[1]).token
        answer = await rec.call(
            "POST /orders",
            ctx.command.request("POST", "/orders", _json.encode({"offer_token": token}), auth),
        )
        if answer is None:
            finished = True
            return
        order_id = _created_decoder.decode(answer[1]).id
        ctx.owner[order_id] = rider
        ctx.started += 1
        ctx.started_orders.append(order_id)
        ctx.started_riders.append(rider)
        if ctx.lag_sample_every and ctx.started % ctx.lag_sample_every == 0:
            asyncio.get_running_loop().create_task(
                visible_after(ctx, order_id, auth, time.perf_counter())
            )
        if ctx.ride_seconds:
            await asyncio.sleep(ctx.ride_seconds)
        answer = await rec.call(
            "POST /orders/{id}/finish",
            ctx.command.request("POST", f"/orders/{order_id}/finish", ctx.finish_body, auth),
        )
        if answer is not None:
            finished = True
            rec.flows += 1
            ctx.orders.append(order_id)
    finally:
        ctx.riders.append(rider)
        if finished:  # a ride that could not be finished keeps its scooter busy
            ctx.scooters.append(scooter)


async def visible_after(ctx: RideContext, order_id: str, auth: str, since: float) -> None:
    """Projection lag as the app sees it: until the query API shows the started ride."""
    conn = Connection(ctx.query.host, ctx.query.port)
    try:
        for _ in range(2000):
            status, _ = await conn.request("GET", f"/orders/{order_id}", None, auth)
            if status == 200:
                ctx.lags.append(time.perf_counter() - since)
                return
            await asyncio.sleep(0.002)
    finally:
        conn.close()


async def command_side(
    settings: Settings,
    meter: CpuMeter,
    *,
    rate: float | None,
    concurrency: int,
    duration: float,
    z_bytes: int,
    ride_seconds: float,
    riders: int,
) -> dict[str, Any]:
    """Complete rides at a fixed arrival ``rate`` (open loop) or at maximum throughput."""
    ctx = await ride_context(settings, z_bytes, ride_seconds, lag_sample_every=20, riders=riders)
    # warm-up: connections, caches, prepared statements
    await asyncio.gather(*(ride(ctx) for _ in range(min(50, concurrency))))
    ctx.recorder, ctx.lags = Recorder(), []
    await asyncio.sleep(PG_STATS_DELAY_SECONDS)  # the warm-up's counters reach the statistics
    pg_before = await pg_sample(settings.db.url)
    before = meter.sample()
    if rate is not None:
        seconds = await open_loop(rate, duration, lambda: ride(ctx), ctx.recorder)
    else:
        seconds = await closed_loop(concurrency, duration, lambda: ride(ctx))
    after = meter.sample()
    await asyncio.sleep(PG_STATS_DELAY_SECONDS)  # sampled lag probes land, counters flush
    pg_after = await pg_sample(settings.db.url)
    ctx.lags.sort()
    rec = ctx.recorder
    rec.schedule_lag.sort()
    report: dict[str, Any] = {
        "side": "command",
        "offered": f"{rate} flows/s" if rate is not None else f"max, {concurrency} concurrent",
        "seconds": round(seconds, 2),
        "flows": rec.flows,
        "flows_per_s": round(rec.flows / seconds, 1),
        "latency": latency_table(rec, seconds),
        "errors": dict(rec.errors),
        "cpu": cpu_share(before, after, seconds),
        "per": "flow",
        "cpu_ms_per": cpu_ms_per(before, after, rec.flows),
        "postgres_per": pg_per(pg_before, pg_after, rec.flows),
        "projection_lag": {
            "samples": len(ctx.lags),
            "p50_ms": round(percentile(ctx.lags, 0.5) * 1000, 1),
            "p99_ms": round(percentile(ctx.lags, 0.99) * 1000, 1),
            "max_ms": round(ctx.lags[-1] * 1000, 1) if ctx.lags else None,
        },
        "schedule_lag_p99_ms": round(percentile(rec.schedule_lag, 0.99) * 1000, 2)
        if rec.schedule_lag
        else 0.0,
        "z_bytes": z_bytes,
    }
    ctx.command.close()
    ctx.query.close()
    return report


# --- query side ------------------------------------------------------------------------------


def redis_client(settings: Settings) -> Any:
    """A plain client of the run's Redis, or a cluster client (``--redis cluster``)."""
    if settings.redis.cluster:
        return aioredis.RedisCluster.from_url(settings.redis.url)
    return aioredis.Redis.from_url(settings.redis.url)


@dataclass
class ViewContext:
    settings: Settings
    query: Pool
    redis: aioredis.Redis | aioredis.RedisCluster
    active: list[str]
    finished: list[str]
    older: list[str]
    users: list[str]
    miss_share: float
    history_share: float
    auth: dict[str, str]  # rider -> Authorization header line
    owner: dict[str, str]  # order id -> its rider
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    recorder: Recorder = field(default_factory=Recorder)


async def view(ctx: ViewContext) -> None:
    """One screen: mostly order views (active, just finished, older), some history pages."""
    rng, rec = ctx.rng, ctx.recorder
    roll = rng.random()
    if roll < ctx.history_share:
        user = rng.choice(ctx.users)
        await rec.call(
            "GET /users/{id}/orders",
            ctx.query.request("GET", f"/users/{user}/orders?limit=20", None, ctx.auth[user]),
        )
        rec.flows += 1
        return
    pick = rng.random()
    if pick < 0.6:
        order_id = rng.choice(ctx.active)
    elif pick < 0.9:
        order_id = rng.choice(ctx.finished)
    else:
        order_id = rng.choice(ctx.older)
        if rng.random() < ctx.miss_share * 10:  # not in Redis: evicted, flushed or older
            try:
                await ctx.redis.delete(order_key(ctx.settings.redis.key_prefix, order_id))
            except Exception as exc:  # the generator's own client, as busy as the box
                # (redis-py's cluster client fails as the services' did: docs/scaling.md)
                rec.errors[f"generator: Redis DEL {type(exc).__name__}"] += 1
    auth = ctx.auth[ctx.owner[order_id]]  # each screen is read by its rider
    await rec.call("GET /orders/{id}", ctx.query.request("GET", f"/orders/{order_id}", None, auth))
    rec.flows += 1


def next_view(ctx: ViewContext, requests: dict[str, bytes]) -> Callable[[], NextRead]:
    """:func:`view`'s choices (the same mix, the same random sequence) for :func:`read_loop`,
    with each request's bytes made once (``requests``: path -> bytes, filled as it goes)."""
    rng = ctx.rng
    host = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"

    def raw(path: str, auth: str) -> bytes:
        made = requests.get(path)
        if made is None:
            made = requests[path] = host % (path.encode(), auth.encode())
        return made

    def next_read() -> NextRead:
        roll = rng.random()
        if roll < ctx.history_share:
            user = rng.choice(ctx.users)
            path = f"/users/{user}/orders?limit=20"
            return "GET /users/{id}/orders", raw(path, ctx.auth[user]), None
        pick = rng.random()
        before = None
        if pick < 0.6:
            order_id = rng.choice(ctx.active)
        elif pick < 0.9:
            order_id = rng.choice(ctx.finished)
        else:
            order_id = rng.choice(ctx.older)
            if rng.random() < ctx.miss_share * 10:  # not in Redis: evicted, flushed or older

                async def evict(order_id: str = order_id) -> None:
                    try:
                        await ctx.redis.delete(order_key(ctx.settings.redis.key_prefix, order_id))
                    except Exception as exc:  # as in view()
                        ctx.recorder.errors[f"generator: Redis DEL {type(exc).__name__}"] += 1

                before = evict
        path = f"/orders/{order_id}"
        return "GET /orders/{id}", raw(path, ctx.auth[ctx.owner[order_id]]), before

    return next_read


@dataclass
class Seeded:
    """Orders seeded through the command API, and who may read them."""

    orders: dict[str, list[str]]  # active, finished, older, users
    auth: dict[str, str]  # rider -> Authorization header line
    owner: dict[str, str]  # order id -> its rider


async def seed_orders(settings: Settings, count: int, z_bytes: int) -> Seeded:
    """Rides through the command API: a third left active, the rest finished."""
    # a rider left in an active ride cannot ride again: one rider per order
    ctx = await ride_context(
        settings, z_bytes, ride_seconds=0, lag_sample_every=0, riders=count + 100
    )
    active: list[str] = []
    users: list[str] = []

    async def start_only() -> None:
        rider, scooter = ctx.riders.popleft(), ctx.scooters.popleft()
        auth = ctx.auth[rider]
        offer = await ctx.command.request(
            "POST", "/offers", _json.encode({"scooter_id": scooter}), auth
        )
        if offer[0] != 201:
            return
        token = _offer_decoder.decode(offer[1]).token
        started = await ctx.command.request(
            "POST", "/orders", _json.encode({"offer_token": token}), auth
        )
        if started[0] == 201:
            order_id = _created_decoder.decode(started[1]).id
            active.append(order_id)
            ctx.owner[order_id] = rider
            users.append(rider)

    for i in range(0, count, 50):
        batch = min(50, count - i)
        await asyncio.gather(*(ride(ctx) for _ in range(batch - batch // 3)))
        await asyncio.gather(*(start_only() for _ in range(batch // 3)))
    finished = ctx.orders
    split = len(finished) // 2
    ctx.command.close()
    ctx.query.close()
    orders = {
        "active": active,
        "finished": finished[split:],
        "older": finished[:split],
        "users": users,
    }
    return Seeded(orders=orders, auth=ctx.auth, owner=ctx.owner)


async def query_side(
    settings: Settings,
    meter: CpuMeter,
    seeded: Seeded,
    *,
    rate: float | None,
    concurrency: int,
    duration: float,
    miss_share: float = 0.02,
    history_share: float = 0.05,
    port: int | None = None,
    warm_passes: int = 0,
    generator: str = "loop",
    pg_stats: bool = True,
) -> dict[str, Any]:
    """Order screens at a fixed ``rate`` or at maximum throughput (``port``: another server).

    ``pg_stats``: read the database's counters before and after the window
    (``postgres_per``; ``PG_STATS_DELAY_SECONDS`` of waiting on each side); False for the
    short interleaved rounds (``tests.load.rounds``), which report CPU only.

    ``generator``: how the maximum-throughput window is driven: ``loop``
    (:func:`~tests.load.harness.read_loop`, the generator's cheapest) or ``pool`` (a
    closed loop of tasks through the HTTP client's ``Pool``, as before issue 13's
    i13read), the same mix either way.

    ``warm_passes``: read every seeded order that many times with its rider's token before
    the window, so that the window measures the steady state (each token's signature
    checked once per process, docs/benchmarks.md "Identity"), not first sights."""
    client = redis_client(settings)
    orders = seeded.orders
    ctx = ViewContext(
        settings=settings,
        query=Pool("127.0.0.1", port or settings.serving.query_port),
        redis=client,
        active=orders["active"],
        finished=orders["finished"],
        older=orders["older"],
        users=orders["users"],
        miss_share=miss_share,
        history_share=history_share,
        auth=seeded.auth,
        owner=seeded.owner,
    )
    await asyncio.gather(*(view(ctx) for _ in range(concurrency)))  # warm-up
    todo = deque(oid for _ in range(warm_passes) for oid in seeded.owner)

    async def warm() -> None:
        while todo:
            oid = todo.popleft()
            await ctx.query.request("GET", f"/orders/{oid}", None, seeded.auth[seeded.owner[oid]])

    await asyncio.gather(*(warm() for _ in range(concurrency)))
    ctx.recorder = Recorder()
    pg_before: dict[str, float] = {}
    if pg_stats:
        await asyncio.sleep(PG_STATS_DELAY_SECONDS)
        pg_before = await pg_sample(settings.db.url)
    before = meter.sample()
    if rate is not None:
        seconds = await open_loop(rate, duration, lambda: view(ctx), ctx.recorder)
    elif generator == "pool":
        seconds = await closed_loop(concurrency, duration, lambda: view(ctx))
    else:
        seconds = await read_loop(
            "127.0.0.1",
            port or settings.serving.query_port,
            concurrency,
            duration,
            next_view(ctx, {}),
            ctx.recorder,
        )
    after = meter.sample()
    pg_after: dict[str, float] = {}
    if pg_stats:
        await asyncio.sleep(PG_STATS_DELAY_SECONDS)
        pg_after = await pg_sample(settings.db.url)
    rec = ctx.recorder
    rec.schedule_lag.sort()
    ctx.query.close()
    await client.aclose()
    return {
        "side": "query",
        "offered": f"{rate} views/s" if rate is not None else f"max, {concurrency} concurrent",
        "seconds": round(seconds, 2),
        "views": rec.flows,
        "flows_per_s": round(rec.flows / seconds, 1),
        "latency": latency_table(rec, seconds),
        "errors": dict(rec.errors),
        "cpu": cpu_share(before, after, seconds),
        "per": "request",
        "cpu_ms_per": cpu_ms_per(before, after, rec.flows),
        "postgres_per": pg_per(pg_before, pg_after, rec.flows) if pg_stats else {},
        "schedule_lag_p99_ms": round(percentile(rec.schedule_lag, 0.99) * 1000, 2)
        if rec.schedule_lag
        else 0.0,
    }


async def ceiling(
    meter: CpuMeter, port: int, *, concurrency: int, duration: float, generator: str = "loop"
) -> dict[str, Any]:
    """The bare Litestar endpoint at maximum throughput, same client (``generator``, as
    :func:`query_side`'s), same concurrency."""
    pool = Pool("127.0.0.1", port)
    rec = Recorder()

    async def one() -> None:
        await rec.call("GET /orders/{id} (bare)", pool.request("GET", "/orders/abc"))
        rec.flows += 1

    await asyncio.gather(*(one() for _ in range(concurrency)))
    rec = Recorder()
    before = meter.sample()
    if generator == "pool":
        seconds = await closed_loop(concurrency, duration, one)
    else:
        request: NextRead = (
            "GET /orders/{id} (bare)",
            b"GET /orders/abc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            None,
        )
        seconds = await read_loop("127.0.0.1", port, concurrency, duration, lambda: request, rec)
    after = meter.sample()
    pool.close()
    return {
        "side": "ceiling",
        "offered": f"max, {concurrency} concurrent",
        "seconds": round(seconds, 2),
        "flows_per_s": round(rec.flows / seconds, 1),
        "latency": latency_table(rec, seconds),
        "errors": dict(rec.errors),
        "cpu": cpu_share(before, after, seconds),
        "per": "request",
        "cpu_ms_per": cpu_ms_per(before, after, rec.flows),
    }


# --- soak: both sides at once -----------------------------------------------------------------


async def soak(
    settings: Settings,
    meter: CpuMeter,
    pids: dict[str, int],
    *,
    rate: float,
    y: float,
    duration: float,
    z_bytes: int,
    ride_seconds: float,
    riders: int,
    sample_every: float = 30.0,
) -> dict[str, Any]:
    """Rides at ``rate`` and their screens at ``rate * y`` together, sampling memory."""
    rides = await ride_context(settings, z_bytes, ride_seconds, lag_sample_every=50, riders=riders)
    client = redis_client(settings)
    await asyncio.gather(*(ride(rides) for _ in range(20)))  # something to view from the start
    views = ViewContext(
        settings=settings,
        query=Pool("127.0.0.1", settings.serving.query_port),
        redis=client,
        active=rides.started_orders,  # shared lists: new rides are viewed as they start
        finished=rides.started_orders,
        older=rides.started_orders,
        users=rides.started_riders,
        miss_share=0.0,
        history_share=0.05,
        auth=rides.auth,
        owner=rides.owner,
    )
    samples: list[dict[str, Any]] = []

    async def sample() -> None:
        while True:
            samples.append(await memory_sample(settings, client, pids, time.monotonic()))
            await asyncio.sleep(sample_every)

    sampler = asyncio.get_running_loop().create_task(sample())
    before = meter.sample()
    ride_seconds_run, view_seconds_run = await asyncio.gather(
        open_loop(rate, duration, lambda: ride(rides), rides.recorder),
        open_loop(rate * y, duration, lambda: view(views), views.recorder),
    )
    after = meter.sample()
    sampler.cancel()
    samples.append(await memory_sample(settings, client, pids, time.monotonic()))
    await client.aclose()
    rides.command.close()
    rides.query.close()
    views.query.close()
    rides.lags.sort()
    seconds = max(ride_seconds_run, view_seconds_run)
    return {
        "side": "soak",
        "offered": f"{rate} flows/s + {rate * y} views/s",
        "seconds": round(seconds, 1),
        "flows": rides.recorder.flows,
        "flows_per_s": round(rides.recorder.flows / duration, 1),
        "views_per_s": round(views.recorder.flows / duration, 1),
        # rates over the arrival window (the last rides end up to a ride's length later)
        "latency": {
            **latency_table(rides.recorder, duration),
            **latency_table(views.recorder, duration),
        },
        "errors": {**rides.recorder.errors, **views.recorder.errors},
        "cpu": cpu_share(before, after, seconds),
        "projection_lag": {
            "samples": len(rides.lags),
            "p50_ms": round(percentile(rides.lags, 0.5) * 1000, 1),
            "p99_ms": round(percentile(rides.lags, 0.99) * 1000, 1),
        },
        "memory": samples,
    }


async def memory_sample(
    settings: Settings, client: aioredis.Redis, pids: dict[str, int], at: float
) -> dict[str, Any]:
    """Resident memory per process, Redis memory and keys, database size and orders."""
    info = await client.info("memory")
    conn = await asyncpg.connect(settings.db.url)
    try:
        db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        partitions = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'orders'::regclass"
        )
    finally:
        await conn.close()
    return {
        "at": round(at, 1),
        "rss_mb": {name: round(rss_bytes(pid) / 2**20, 1) for name, pid in pids.items()},
        "redis_used_mb": round(int(info["used_memory"]) / 2**20, 2),
        "db_mb": round(db_bytes / 2**20, 1),
        "orders": orders,
        "partitions": partitions,
    }
