"""The worker's payment operations, end to end: retries with backoff, debt, releases, and
several workers at once — asserted on payment_operations rows, orders, user_summary, the
outbox and the stubs' payments ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from command_api import rides, worker
from command_api.external import ServiceError
from shared.settings import Settings
from tests.e2e.conftest import (
    Ids,
    backdate,
    command_deps,
    eventually,
    ledger,
    make_due,
    new_offer,
    order_row,
    payment_op,
    set_fault,
    start,
    summary_row,
)

pytestmark = pytest.mark.usefixtures("reset_faults")


async def finished_unpaid(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    rider: str,
    scooter: str,
    seconds: int,
    *,
    then_restore: bool = False,
) -> dict[str, Any]:
    """A ride of ``seconds`` finished while payments is down: ended, its charge owed.

    Payments stays down unless ``then_restore`` (no worker may run meanwhile then).
    """
    order = await start(api, rider, scooter)
    await backdate(db, order["id"], seconds)
    await set_fault(stubs, "payments", outage=True)
    response = await api.post(f"/orders/{order['id']}/finish", json={})
    assert response.status_code == 200, response.text
    done: dict[str, Any] = response.json()
    assert done["payment_status"] == "pending"
    if then_restore:
        await set_fault(stubs, "payments", outage=False)
    assert done["total_amount"] == (
        0 if seconds < 5 else seconds * order["price_per_minute"] // 60 + order["price_unlock"]
    )
    return {**done, "deposit": order["deposit"]}


async def settled_events(db: asyncpg.Pool, order_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE order_id = $1::uuid AND event_type = 'payment_settled'",
        order_id,
    )
    return count


@contextlib.asynccontextmanager
async def worker_loops(settings: Settings, count: int) -> AsyncIterator[None]:
    """``count`` worker loops (as separate processes would be) running beside the test."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(settings, stop)) for _ in range(count)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


# --- charges ----------------------------------------------------------------------------------


async def test_charge_is_retried_with_backoff_until_it_succeeds(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    worker_deps: rides.Deps,
) -> None:
    rider = ids.rider(trusted=False)
    order = await finished_unpaid(api, db, stubs, rider, ids.scooter(), 90)
    total = order["total_amount"]
    owed = await payment_op(db, order["id"], "charge")
    assert (owed["state"], owed["amount"], owed["attempts"]) == ("pending", total, 0)
    # the finishing request had its own try; the worker waits for it before racing it
    assert owed["next_attempt_at"] > owed["created_at"]

    for attempt in (1, 2):
        await make_due(db, order["id"], "charge")
        await worker.process_due_operations(worker_deps)
        op = await payment_op(db, order["id"], "charge")
        assert (op["state"], op["attempts"]) == ("pending", attempt)
        assert "503" in op["last_error"]
        # rescheduled after the exponential backoff of this attempt
        delay = op["next_attempt_at"] - op["updated_at"]
        assert delay == timedelta(seconds=worker.backoff_seconds(base_settings, attempt))
        assert (await order_row(db, order["id"]))["payment_status"] == "pending"
        assert (await ledger(stubs, order["id"]))["charged"] == 0

    await set_fault(stubs, "payments", outage=False)
    await make_due(db, order["id"], "charge")
    await worker.process_due_operations(worker_deps)

    op = await payment_op(db, order["id"], "charge")
    assert (op["state"], op["attempts"]) == ("done", 3)
    assert (await order_row(db, order["id"]))["payment_status"] == "charged"
    summary = await summary_row(db, rider)
    assert (summary["total_charged"], summary["debt"]) == (total, 0)
    assert summary["last_payment_status"] == "charged"
    money = await ledger(stubs, order["id"])
    assert money["charged"] == total
    assert [e["kind"] for e in money["entries"]].count("charge") == 1
    assert money["released"] == max(order["deposit"] - total, 0)
    assert await settled_events(db, order["id"]) == 1
    # done is done: nothing is due for this order any more
    await make_due(db, order["id"], "charge")
    await worker.process_due_operations(worker_deps)
    assert (await payment_op(db, order["id"], "charge"))["attempts"] == 3


def test_backoff_doubles_up_to_its_cap(base_settings: Settings) -> None:
    base, cap = base_settings.payments.retry_base_seconds, base_settings.payments.retry_max_seconds
    delays = [worker.backoff_seconds(base_settings, n) for n in range(1, 8)]
    assert delays[:3] == [base, 2 * base, 4 * base]
    assert delays == sorted(delays)
    assert max(delays) == cap


async def test_a_declined_charge_becomes_debt_on_the_last_attempt_only(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    worker_deps: rides.Deps,
) -> None:
    rider = ids.rider()
    order = await finished_unpaid(api, db, stubs, rider, ids.scooter(), 30)
    total = order["total_amount"]
    await set_fault(stubs, "payments", outage=False, decline=True)
    for attempt in range(1, base_settings.payments.max_attempts + 1):
        await make_due(db, order["id"], "charge")
        await worker.process_due_operations(worker_deps)
        op = await payment_op(db, order["id"], "charge")
        assert op["attempts"] == attempt
        last = attempt == base_settings.payments.max_attempts
        assert op["state"] == ("gave_up" if last else "pending")
        status = (await order_row(db, order["id"]))["payment_status"]
        assert status == ("debt" if last else "pending")
        if not last:
            assert "402" in op["last_error"]
            assert "absent" in op["last_error"]  # looked up before anything is decided

    summary = await summary_row(db, rider)
    assert (summary["debt"], summary["total_charged"]) == (total, 0)
    assert summary["last_payment_status"] == "debt"
    assert await settled_events(db, order["id"]) == 1
    # the card works again: a charge that became debt is not tried again (settling the
    # debt is the operator's act)
    await set_fault(stubs, "payments", decline=False)
    await make_due(db, order["id"], "charge")
    await worker.process_due_operations(worker_deps)
    assert (await ledger(stubs, order["id"]))["charged"] == 0
    assert (await db.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", rider)) == total
    # and the rider gets no offer for another ride
    refused = await api.post("/offers", json={"user_id": rider, "scooter_id": ids.scooter()})
    assert refused.status_code == 402
    assert refused.json()["code"] == "user_has_debt"


async def test_an_unknown_outcome_is_never_debt_however_many_attempts(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    worker_deps: rides.Deps,
) -> None:
    """Payments down (503), failing (500) or still working on an earlier call of ours:
    none of it is a definite decline, so the charge stays owed, past the attempt limit."""
    rider = ids.rider()
    order = await finished_unpaid(api, db, stubs, rider, ids.scooter(), 30)
    total = order["total_amount"]
    limit = base_settings.payments.max_attempts
    for attempt in range(1, limit + 3):
        if attempt == limit + 1:
            await set_fault(stubs, "payments", outage=False, error_rate=1.0)
        await make_due(db, order["id"], "charge")
        await worker.process_due_operations(worker_deps)
        op = await payment_op(db, order["id"], "charge")
        assert (op["state"], op["attempts"]) == ("pending", attempt)
        assert (await order_row(db, order["id"]))["payment_status"] == "pending"
    assert "lookup failed" in op["last_error"]
    assert (await summary_row(db, rider))["debt"] == 0
    assert (await ledger(stubs, order["id"]))["charged"] == 0

    # an earlier call still being worked on at payments may land: nothing is decided
    await set_fault(stubs, "payments", error_rate=0.0, latency_ms=1_500)
    earlier = asyncio.create_task(worker_deps.services.clear(rider, order["id"], total))
    await asyncio.sleep(0.2)
    await set_fault(stubs, "payments", latency_ms=0)
    await make_due(db, order["id"], "charge")
    await worker.process_due_operations(worker_deps)
    op = await payment_op(db, order["id"], "charge")
    assert op["state"] == "pending"
    assert "in_progress" in op["last_error"]
    with contextlib.suppress(ServiceError):
        await earlier  # our side timed out; payments goes on

    async def landed() -> bool:
        return bool((await ledger(stubs, order["id"]))["charged"] == total)

    await eventually(landed)
    await make_due(db, order["id"], "charge")
    await worker.process_due_operations(worker_deps)
    assert (await order_row(db, order["id"]))["payment_status"] == "charged"
    summary = await summary_row(db, rider)
    assert (summary["debt"], summary["total_charged"]) == (0, total)
    money = await ledger(stubs, order["id"])
    assert [e["kind"] for e in money["entries"]].count("charge") == 1


# --- releases (cancelled rides, rejected starts) -----------------------------------------------


async def test_release_of_a_cancelled_ride_is_retried_past_the_attempt_limit(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    running_worker: None,
) -> None:
    rider = ids.rider(trusted=False)
    order = await finished_unpaid(api, db, stubs, rider, ids.scooter(), 0)
    assert order["status"] == "cancelled"
    assert order["deposit"] > 0

    async def retried_past_limit() -> bool:
        op = await payment_op(db, order["id"], "charge")
        return bool(op["attempts"] > base_settings.payments.max_attempts + 1)

    await eventually(retried_past_limit)
    op = await payment_op(db, order["id"], "charge")
    assert op["state"] == "pending"  # a release never turns into debt
    assert (await order_row(db, order["id"]))["payment_status"] == "pending"
    assert (await db.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", rider)) == 0

    await set_fault(stubs, "payments", outage=False)

    async def released() -> bool:
        return bool((await order_row(db, order["id"]))["payment_status"] == "released")

    await eventually(released)
    money = await ledger(stubs, order["id"])
    assert money["charged"] == 0
    assert money["released"] == money["held"] == order["deposit"]
    summary = await summary_row(db, rider)
    assert (summary["debt"], summary["total_charged"], summary["rides_count"]) == (0, 0, 0)


async def test_release_of_a_rejected_start_is_retried_until_done(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    running_worker: None,
) -> None:
    rider = ids.rider(trusted=False)
    offer = await new_offer(api, rider, ids.scooter())
    # a timeout: the hold may have happened, so the start owes a release
    slow = int(base_settings.external.payment_timeout_seconds * 1000) + 300
    await set_fault(stubs, "payments", latency_ms=slow)
    response = await api.post("/orders", json={"offer_token": offer["token"]})
    assert response.status_code == 503
    await set_fault(stubs, "payments", latency_ms=0, outage=True)
    (order,) = await db.fetch(
        "SELECT id, status FROM orders WHERE offer_id = $1::uuid", offer["id"]
    )
    assert order["status"] == "rejected"

    async def retried_past_limit() -> bool:
        op = await payment_op(db, order["id"], "release")
        return bool(op["attempts"] > base_settings.payments.max_attempts + 1)

    await eventually(retried_past_limit)
    assert (await payment_op(db, order["id"], "release"))["state"] == "pending"

    await set_fault(stubs, "payments", outage=False)

    async def done() -> bool:
        return bool((await payment_op(db, order["id"], "release"))["state"] == "done")

    await eventually(done)
    money = await ledger(stubs, str(order["id"]))
    assert money["held"] == money["released"]
    assert money["charged"] == 0
    assert [e["kind"] for e in money["entries"]].count("charge") == 1  # the settling clear


# --- several workers --------------------------------------------------------------------------


async def test_two_workers_never_double_charge(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
) -> None:
    riders = [ids.rider() for _ in range(6)]
    orders = [
        await finished_unpaid(api, db, stubs, rider, ids.scooter(), 60 + 7 * n, then_restore=True)
        for n, rider in enumerate(riders)
    ]
    # payments back but slow: every charge call is in flight a while, widening any race
    await set_fault(stubs, "payments", outage=False, latency_ms=100)
    for order in orders:
        await make_due(db, order["id"], "charge")

    async with worker_loops(base_settings, 2):

        async def all_charged() -> bool:
            statuses = [(await order_row(db, o["id"]))["payment_status"] for o in orders]
            return statuses == ["charged"] * len(orders)

        await eventually(all_charged)

    for rider, order in zip(riders, orders, strict=True):
        total = order["total_amount"]
        money = await ledger(stubs, order["id"])
        assert money["charged"] == total
        assert [e["kind"] for e in money["entries"]].count("charge") == 1
        op = await payment_op(db, order["id"], "charge")
        assert (op["state"], op["attempts"]) == ("done", 1)  # tried by one worker, once
        assert await settled_events(db, order["id"]) == 1
        charged = await db.fetchval(
            "SELECT total_charged FROM user_summary WHERE user_id = $1", rider
        )
        assert charged == total


async def test_concurrent_worker_passes_lease_each_operation_once(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
) -> None:
    orders = [
        await finished_unpaid(api, db, stubs, ids.rider(), ids.scooter(), 45, then_restore=True)
        for _ in range(8)
    ]
    for order in orders:
        await make_due(db, order["id"], "charge")
    async with command_deps(base_settings, db) as first, command_deps(base_settings, db) as second:
        await asyncio.gather(*(worker.process_due_operations(d) for d in (first, second) * 2))

    for order in orders:
        op = await payment_op(db, order["id"], "charge")
        assert (op["state"], op["attempts"]) == ("done", 1)
        assert (await order_row(db, order["id"]))["payment_status"] == "charged"
        money = await ledger(stubs, order["id"])
        assert money["charged"] == order["total_amount"]
        assert [e["kind"] for e in money["entries"]].count("charge") == 1
        assert await settled_events(db, order["id"]) == 1
