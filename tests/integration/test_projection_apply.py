"""A batch of projection writes as one ``APPLY`` call (issue 13): the same outcome, write
by write, as each write's own script, over redis-py and over the projector's pipelined
connection, and the scripts loaded again when Redis does not know them (NOSCRIPT)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from query_api import projection
from query_api.projection import Write
from query_api.read_connection import ReadConnection
from shared.lifecycle import OrderStatus, PaymentStatus
from shared.settings import Settings
from shared.views import (
    COMPLETE_MARK,
    OrderView,
    order_key,
    order_view_decoder,
    user_orders_key,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[ReadConnection]:
    conn = ReadConnection(settings.redis.url, timeout_seconds=5.0, max_pending=64)
    yield conn
    await conn.aclose()


def _view(
    order_id: str, user_id: str, version: int, status: OrderStatus = OrderStatus.ACTIVE
) -> OrderView:
    return OrderView(
        id=order_id,
        user_id=user_id,
        scooter_id="scooter-1",
        zone_id="zone-1",
        status=status,
        payment_status=PaymentStatus.HELD,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        created_at=NOW,
        started_at=NOW,
        free_ride_seconds=5,
        version=version,
    )


def _writes(prefix: str, order_id: str, user_id: str) -> list[Write]:
    """Versions 2, 1 (older: refused), 2 again (same: refused), 3; two recent merges."""
    writes = [
        projection.put_order(prefix, _view(order_id, user_id, 2), 0),
        projection.put_order(prefix, _view(order_id, user_id, 1), 0),
        projection.add_recent(prefix, user_id, [(order_id, 5)], keep=2, ttl=60, complete=False),
        projection.put_order(prefix, _view(order_id, user_id, 2), 0),
        projection.add_recent(
            prefix,
            user_id,
            [("older", 1), ("newer", 9), ("newest", 10)],
            keep=2,
            ttl=60,
            complete=True,
        ),
        projection.put_order(prefix, _view(order_id, user_id, 3, OrderStatus.FINISHED), 120),
    ]
    return writes


async def _outcome(redis: Redis, prefix: str, order_id: str, user_id: str) -> tuple[object, ...]:
    stored = await redis.hgetall(order_key(prefix, order_id))
    data = stored[b"d"]
    assert isinstance(data, bytes)
    view = order_view_decoder.decode(data)
    recent = await redis.zrange(user_orders_key(prefix, user_id), 0, -1, withscores=True)
    return (
        int(stored[b"v"]),
        view.status,
        0 < await redis.ttl(order_key(prefix, order_id)) <= 120,
        recent,
        0 < await redis.ttl(user_orders_key(prefix, user_id)) <= 60,
    )


@pytest.mark.parametrize("over", ["redis-py", "connection"])
async def test_a_batch_lands_as_its_writes_one_by_one(
    settings: Settings, redis: Redis, connection: ReadConnection, over: str
) -> None:
    prefix = settings.redis.key_prefix
    one, batch = str(uuid.uuid4()), str(uuid.uuid4())
    rider_one, rider_batch = f"rider-{uuid.uuid4()}", f"rider-{uuid.uuid4()}"
    expected = []
    for write in _writes(prefix, one, rider_one):  # each its own script, as a cluster does
        result = await redis.eval(
            projection._BODIES[write.script], len(write.keys), *write.keys, *write.args
        )
        expected.append(int(result))
    results = await projection.apply(
        redis,
        _writes(prefix, batch, rider_batch),
        connection if over == "connection" else None,
    )
    assert results == expected == [1, 0, 1, 0, 3, 1]
    got = await _outcome(redis, prefix, batch, rider_batch)
    assert got == await _outcome(redis, prefix, one, rider_one)
    assert got == (
        3,
        "finished",
        True,
        [(COMPLETE_MARK.encode(), float("-inf")), (b"newer", 9.0), (b"newest", 10.0)],
        True,
    )


@pytest.mark.parametrize("over", ["redis-py", "connection"])
async def test_unknown_scripts_are_loaded_and_the_batch_run_again(
    settings: Settings,
    redis: Redis,
    connection: ReadConnection,
    over: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a body Redis has never seen (without flushing the scripts every test run shares)
    body = projection.APPLY + f"-- {uuid.uuid4()}\n"
    monkeypatch.setitem(projection._BODIES, "apply", body)
    monkeypatch.setitem(
        projection._SCRIPTS, "apply", hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
    )
    prefix = settings.redis.key_prefix
    order_id = str(uuid.uuid4())
    writes = [projection.put_order(prefix, _view(order_id, "rider-x", 1), 0)]
    assert await projection.apply(redis, writes, connection if over == "connection" else None) == [
        1
    ]
    assert await redis.script_exists(projection._SCRIPTS["apply"]) == [True]
    assert await redis.hget(order_key(prefix, order_id), "v") == b"1"


async def test_a_rebuild_sized_batch_goes_in_chunks(
    settings: Settings, redis: Redis, connection: ReadConnection
) -> None:
    prefix = settings.redis.key_prefix
    ids = [str(uuid.uuid4()) for _ in range(300)]  # more than one APPLY call's 128 writes
    writes = [projection.put_order(prefix, _view(i, "rider-many", 1), 0) for i in ids]
    assert await projection.apply(redis, writes, connection) == [1] * 300
    assert await projection.apply(redis, writes) == [0] * 300
    stored = await redis.hget(order_key(prefix, ids[-1]), "v")
    assert stored == b"1"
