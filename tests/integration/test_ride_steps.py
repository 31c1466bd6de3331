"""Each SQL ride step (migrations/sql/0004_ride_steps_apply.sql) against real Postgres:
what it writes when it applies, and each guard refusing (ADR 0005, shared.lifecycle)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from command_api import repository as repo
from shared.domain import NewOrder, Order, PricingInputs
from shared.ids import created_at_of, uuid7
from shared.lifecycle import (
    NEW_ORDER,
    OrderStatus,
    PaymentOutcome,
    PaymentStatus,
    Refusal,
    decide_finish,
    decide_settle,
)
from tests.vectors import DOMAIN_PRICING

MAX_RIDES = 1
HOLD_DUE = 60.0
PRICING = DOMAIN_PRICING


def new_order(user_id: str, scooter_id: str, *, offer_id: uuid.UUID | None = None) -> NewOrder:
    order_id = uuid7()
    created_at = created_at_of(order_id)
    status, payment_status = NEW_ORDER
    return NewOrder(
        id=str(order_id),
        offer_id=str(offer_id or uuid.uuid4()),
        user_id=user_id,
        scooter_id=scooter_id,
        zone_id="zone-1",
        status=status,
        payment_status=payment_status,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        free_ride_seconds=5,
        created_at=created_at,
        started_at=created_at,
        version=1,
        pricing=PRICING,
    )


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"steps-user-{tag}", f"steps-scooter-{tag}"


async def start(pool: asyncpg.Pool, order: NewOrder) -> None:
    async with pool.acquire() as conn:
        await repo.start_ride(
            conn, order, order.created_at + timedelta(minutes=5), MAX_RIDES, HOLD_DUE
        )


def key(order: Order) -> tuple[uuid.UUID, datetime]:
    order_id = uuid.UUID(order.id)
    return order_id, created_at_of(order_id)


async def activate(pool: asyncpg.Pool, order: Order) -> Order | None:
    async with pool.acquire() as conn:
        return await repo.activate_ride(conn, *key(order), datetime.now(UTC))


async def summary(pool: asyncpg.Pool, user_id: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM user_summary WHERE user_id = $1", user_id)
    assert row is not None
    return row


async def operation(pool: asyncpg.Pool, order: Order, kind: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT amount, state FROM payment_operations WHERE order_id = $1 AND kind = $2",
        uuid.UUID(order.id),
        kind,
    )


async def state_of(pool: asyncpg.Pool, order: Order, kind: str) -> str | None:
    row = await operation(pool, order, kind)
    return None if row is None else str(row["state"])


async def events(pool: asyncpg.Pool, order: Order) -> list[str]:
    rows = await pool.fetch(
        "SELECT event_type FROM outbox WHERE order_id = $1 ORDER BY id", uuid.UUID(order.id)
    )
    return [r["event_type"] for r in rows]


async def refused(pool: asyncpg.Pool, order: NewOrder) -> str:
    with pytest.raises(repo.Refused) as caught:
        await start(pool, order)
    stored = await pool.fetchval("SELECT count(*) FROM orders WHERE id = $1", uuid.UUID(order.id))
    assert stored == 0  # the whole step rolled back
    return caught.value.code


# --- start ------------------------------------------------------------------------------


async def test_start_writes_the_order_and_its_claims(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    order = new_order(user, scooter)
    await start(pool, order)
    async with pool.acquire() as conn:
        stored = await repo.get_order(conn, *key(order))
    assert stored == Order(**{f: getattr(order, f) for f in Order.__struct_fields__})
    assert (stored.status, stored.payment_status) == NEW_ORDER
    pricing = await pool.fetchval("SELECT pricing::text FROM orders WHERE id = $1", key(order)[0])
    assert msgspec.json.decode(pricing, type=PricingInputs) == PRICING
    assert (await summary(pool, user))["active_rides"] == 1
    hold = await operation(pool, order, "hold")
    assert hold is not None
    assert (hold["amount"], hold["state"]) == (300, "pending")
    assert await pool.fetchval(
        "SELECT order_id FROM active_rides WHERE scooter_id = $1", scooter
    ) == uuid.UUID(order.id)
    assert await events(pool, order) == []  # a starting order is never shown


async def test_start_refuses_a_used_offer(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    first = new_order(user, scooter)
    await start(pool, first)
    again = new_order(user + "-b", scooter + "-b", offer_id=uuid.UUID(first.offer_id))
    assert await refused(pool, again) == Refusal.OFFER_ALREADY_USED


async def test_start_refuses_a_busy_scooter(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    await start(pool, new_order(user, scooter))
    assert await refused(pool, new_order(user + "-b", scooter)) == Refusal.SCOOTER_BUSY


async def test_start_refuses_too_many_active_rides(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    await start(pool, new_order(user, scooter))
    assert await refused(pool, new_order(user, scooter + "-b")) == Refusal.TOO_MANY_ACTIVE_RIDES
    assert (await summary(pool, user))["active_rides"] == 1


async def test_start_refuses_a_rider_with_debt(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    await pool.execute("INSERT INTO user_summary (user_id, debt) VALUES ($1, 1)", user)
    assert await refused(pool, new_order(user, scooter)) == Refusal.USER_HAS_DEBT
    claimed = await pool.fetchval(
        "SELECT count(*) FROM active_rides WHERE scooter_id = $1", scooter
    )
    assert claimed == 0
    assert (await summary(pool, user))["active_rides"] == 0


# --- activate / reject ------------------------------------------------------------------


async def test_activate_applies_once(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    order = new_order(user, scooter)
    await start(pool, order)
    active = await activate(pool, order)
    assert active is not None
    assert (active.status, active.payment_status, active.version) == ("active", "held", 2)
    assert await state_of(pool, order, "hold") == "done"
    assert await events(pool, order) == ["order_started"]
    assert await activate(pool, order) is None  # no longer starting
    assert await events(pool, order) == ["order_started"]


async def test_reject_frees_everything_and_owes_a_release(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    order = new_order(user, scooter)
    await start(pool, order)
    async with pool.acquire() as conn:
        assert await repo.reject_start(conn, *key(order), True) is True
        stored = await repo.get_order(conn, *key(order))
        assert await repo.reject_start(conn, *key(order), True) is False  # not starting
    assert stored is not None
    assert (stored.status, stored.payment_status) == ("rejected", "failed")
    assert (await summary(pool, user))["active_rides"] == 0
    assert await state_of(pool, order, "hold") == "gave_up"
    release = await operation(pool, order, "release")
    assert release is not None
    assert release["state"] == "pending"
    # the offer and the scooter are free again
    await start(pool, new_order(user, scooter, offer_id=uuid.UUID(order.offer_id)))


async def test_reject_refuses_an_active_ride(pool: asyncpg.Pool) -> None:
    user, scooter = names()
    order = new_order(user, scooter)
    await start(pool, order)
    assert await activate(pool, order) is not None
    async with pool.acquire() as conn:
        assert await repo.reject_start(conn, *key(order), False) is False
        stored = await repo.get_order(conn, *key(order))
    assert stored is not None
    assert stored.status == OrderStatus.ACTIVE


# --- finish / settle --------------------------------------------------------------------


async def finish(pool: asyncpg.Pool, order: Order, seconds: float, distance: int) -> Order | None:
    decision = decide_finish(
        started_at=order.started_at,
        finished_at=order.started_at + timedelta(seconds=seconds),
        price_per_minute=order.price_per_minute,
        price_unlock=order.price_unlock,
        free_ride_seconds=order.free_ride_seconds,
    )
    async with pool.acquire() as conn:
        return await repo.finish_ride(conn, *key(order), decision, distance, None, 60.0)


async def active_ride(pool: asyncpg.Pool) -> tuple[str, Order]:
    user, scooter = names()
    order = new_order(user, scooter)
    await start(pool, order)
    active = await activate(pool, order)
    assert active is not None
    return user, active


async def test_finish_applies_the_decision_once(pool: asyncpg.Pool) -> None:
    user, order = await active_ride(pool)
    ended = await finish(pool, order, 8, 3_000_000_000)  # beyond int4: issue 8
    assert ended is not None
    assert (ended.status, ended.payment_status) == ("finished", "pending")
    assert (ended.duration_seconds, ended.total_amount) == (8, 48)
    assert ended.distance_meters == 3_000_000_000
    row = await summary(pool, user)
    assert (row["active_rides"], row["rides_count"]) == (0, 1)
    charge = await operation(pool, order, "charge")
    assert charge is not None
    assert (charge["amount"], charge["state"]) == (48, "pending")
    assert await finish(pool, order, 20, 1) is None  # no longer active
    assert (await summary(pool, user))["rides_count"] == 1
    assert await events(pool, order) == ["order_started", "order_finished"]


async def test_finish_under_the_free_threshold_cancels(pool: asyncpg.Pool) -> None:
    user, order = await active_ride(pool)
    ended = await finish(pool, order, 2, 0)
    assert ended is not None
    assert (ended.status, ended.total_amount) == ("cancelled", 0)
    assert (await summary(pool, user))["rides_count"] == 0


async def test_finish_of_a_huge_amount_is_64_bit(pool: asyncpg.Pool) -> None:
    _, order = await active_ride(pool)
    ended = await finish(pool, order, 6_000_000_000, 10)
    assert ended is not None
    assert ended.total_amount == 6_000_000_000 * 24 // 60 + 45
    assert ended.total_amount > 2**31


async def finish_on_terms(pool: asyncpg.Pool, order: Order, terms: Order) -> Order | None:
    """The finish of a ride decided from ``terms`` (an activation snapshot kept by the
    process, issue 13) instead of a fresh read."""
    decision = decide_finish(
        started_at=terms.started_at,
        finished_at=terms.started_at + timedelta(seconds=8),
        price_per_minute=terms.price_per_minute,
        price_unlock=terms.price_unlock,
        free_ride_seconds=terms.free_ride_seconds,
    )
    async with pool.acquire() as conn:
        return await repo.finish_ride(conn, *key(order), decision, 1, None, 60.0, terms)


@pytest.mark.parametrize(
    "name", ["started_at", "price_per_minute", "price_unlock", "free_ride_seconds"]
)
async def test_finish_on_a_snapshot_refuses_terms_the_row_no_longer_has(
    pool: asyncpg.Pool, name: str
) -> None:
    user, order = await active_ride(pool)
    other = {
        "started_at": order.started_at - timedelta(seconds=1),  # e.g. a backdated ride
        "price_per_minute": order.price_per_minute + 1,
        "price_unlock": 0,
        "free_ride_seconds": order.free_ride_seconds + 4,
    }[name]
    stale = msgspec.structs.replace(order, **{name: other})
    assert await finish_on_terms(pool, order, stale) is None  # nothing written
    async with pool.acquire() as conn:
        stored = await repo.get_order(conn, *key(order))
    assert stored is not None
    assert (stored.status, stored.version) == ("active", order.version)
    assert await operation(pool, order, "charge") is None
    assert (await summary(pool, user))["active_rides"] == 1
    assert await events(pool, order) == ["order_started"]

    ended = await finish_on_terms(pool, order, order)  # the row's own terms: applies once
    assert ended is not None
    assert (ended.status, ended.total_amount) == ("finished", 48)
    assert await finish_on_terms(pool, order, order) is None
    assert await events(pool, order) == ["order_started", "order_finished"]


async def settle(pool: asyncpg.Pool, order: Order, amount: int, gave_up: bool) -> Order | None:
    outcome = PaymentOutcome.DECLINED if gave_up else PaymentOutcome.DONE
    decision = decide_settle(amount, outcome, attempts=3, max_attempts=3)
    assert decision is not None
    async with pool.acquire() as conn:
        return await repo.settle_charge(conn, *key(order), decision)


@pytest.mark.parametrize(
    ("seconds", "gave_up", "status", "charged", "debt", "state"),
    [
        (8, False, PaymentStatus.CHARGED, 48, 0, "done"),
        (2, False, PaymentStatus.RELEASED, 0, 0, "done"),
        (8, True, PaymentStatus.DEBT, 0, 48, "gave_up"),
    ],
)
async def test_settle_applies_the_decision_once(
    pool: asyncpg.Pool,
    seconds: int,
    gave_up: bool,
    status: PaymentStatus,
    charged: int,
    debt: int,
    state: str,
) -> None:
    user, order = await active_ride(pool)
    ended = await finish(pool, order, seconds, 10)
    assert ended is not None
    assert ended.total_amount is not None
    settled = await settle(pool, order, ended.total_amount, gave_up)
    assert settled is not None
    assert settled.payment_status == status
    row = await summary(pool, user)
    assert (row["total_charged"], row["debt"], row["last_payment_status"]) == (
        charged,
        debt,
        status,
    )
    assert await state_of(pool, order, "charge") == state
    assert await settle(pool, order, ended.total_amount, gave_up) is None  # settled already
    assert (await summary(pool, user))["total_charged"] == charged
    assert await events(pool, order) == ["order_started", "order_finished", "payment_settled"]


async def test_settle_refuses_an_order_without_an_owed_charge(pool: asyncpg.Pool) -> None:
    _, order = await active_ride(pool)
    assert await settle(pool, order, 48, False) is None
    async with pool.acquire() as conn:
        stored = await repo.get_order(conn, *key(order))
    assert stored is not None
    assert stored.payment_status == PaymentStatus.HELD
