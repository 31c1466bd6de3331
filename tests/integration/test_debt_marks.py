"""The riders' debt marks against real Redis and Postgres (command_api/debt_marks.py,
ADR 0013): what an offer may skip, and what a recorded debt does to the mark."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from command_api import repository as repo
from command_api import rides
from command_api.debt_marks import CHECK, CHECK_SECONDS, READ_MAX_AGE_SECONDS, DebtMarks
from command_api.rate_limit import OfferRateLimit
from shared.ids import created_at_of
from shared.lifecycle import PaymentOutcome, decide_finish, decide_settle
from shared.settings import Settings
from tests.integration.test_ride_steps import new_order


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"marks-user-{tag}", f"marks-scooter-{tag}"


@pytest.fixture
def marks(redis: Redis, settings: Settings) -> DebtMarks:
    return DebtMarks(redis, settings.redis.key_prefix)


@pytest.fixture
def limiter(redis: Redis, settings: Settings, marks: DebtMarks) -> OfferRateLimit:
    return OfferRateLimit(redis, settings.redis.key_prefix, 1_000, 60, marks)


async def test_only_a_fresh_debt_free_read_marks_a_rider_clear(
    marks: DebtMarks, limiter: OfferRateLimit, redis: Redis
) -> None:
    rider, _ = names()
    assert await limiter.check_and_read_debt_mark(rider) is False  # no mark: ask Postgres

    await marks.note_clear(rider, time.monotonic() - READ_MAX_AGE_SECONDS - 1)  # a slow read
    assert await redis.get(marks.key(rider)) is None

    await marks.note_clear(rider, time.monotonic())
    assert await limiter.check_and_read_debt_mark(rider) is True
    assert await redis.ttl(marks.key(rider)) > 0


async def test_a_debt_being_recorded_replaces_clear_and_a_later_read_cannot_undo_it(
    marks: DebtMarks, limiter: OfferRateLimit, redis: Redis
) -> None:
    rider, _ = names()
    await marks.note_clear(rider, time.monotonic())
    read_started = time.monotonic()  # an offer reads no debt here, before the debt commits
    await marks.note_debt(rider)
    assert await redis.get(marks.key(rider)) == CHECK
    assert 0 < await redis.ttl(marks.key(rider)) <= CHECK_SECONDS

    await marks.note_clear(rider, read_started)  # that offer's mark arrives late: refused
    assert await redis.get(marks.key(rider)) == CHECK
    assert await limiter.check_and_read_debt_mark(rider) is False


async def test_without_marks_or_without_redis_every_offer_asks_postgres(
    marks: DebtMarks, redis: Redis, settings: Settings
) -> None:
    rider, _ = names()
    await marks.note_clear(rider, time.monotonic())
    unmarked = OfferRateLimit(redis, settings.redis.key_prefix, 1_000, 60)
    assert await unmarked.check_and_read_debt_mark(rider) is False
    nobody = Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        down = OfferRateLimit(nobody, settings.redis.key_prefix, 1_000, 60, marks)
        assert await down.check_and_read_debt_mark(rider) is False  # fails open, reads Postgres
        await DebtMarks(nobody, settings.redis.key_prefix).note_debt(rider)  # logged, not raised
    finally:
        await nobody.aclose()


class Recording(DebtMarks):
    """Debt marks that note the rider's recorded debt in Postgres at each ``check``."""

    def __init__(self, redis: Redis, prefix: str, pool: asyncpg.Pool) -> None:
        super().__init__(redis, prefix)
        self.pool = pool
        self.debt_at_check: list[int] = []

    async def note_debt(self, rider: str) -> None:
        debt = await self.pool.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", rider)
        self.debt_at_check.append(int(debt))
        await super().note_debt(rider)


async def test_recording_a_debt_marks_the_rider_check_before_and_after_its_transaction(
    pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    rider, scooter = names()
    marks = Recording(redis, settings.redis.key_prefix, pool)
    await marks.note_clear(rider, time.monotonic())  # an offer found no debt
    order = new_order(rider, scooter)
    order_id = uuid.UUID(order.id)
    created_at = created_at_of(order_id)
    async with pool.acquire() as conn:
        await repo.start_ride(conn, order, created_at + timedelta(minutes=5), 1, 60.0)
        started = await repo.activate_ride(conn, order_id, created_at, datetime.now(UTC))
        assert started is not None
        decision = decide_finish(
            started_at=started.started_at - timedelta(seconds=8),
            finished_at=started.started_at,
            price_per_minute=started.price_per_minute,
            price_unlock=started.price_unlock,
            free_ride_seconds=started.free_ride_seconds,
            max_cost=10_000,
            max_charged_seconds=86_400,
        )
        assert await repo.finish_ride(conn, order_id, created_at, decision, 0, None, 4.0)
    debt = decide_settle(48, PaymentOutcome.DECLINED, attempts=3, max_attempts=3)
    assert debt is not None

    settled = await rides.settle_charge(
        pool, order_id, created_at, debt, debt_marks=marks, user_id=rider
    )

    assert settled is not None
    assert settled.payment_status == "debt"
    assert marks.debt_at_check == [0, 48]  # before the transaction, and after its commit
    assert await redis.get(marks.key(rider)) == CHECK
