"""The ambiguous money paths (issue 8, items 8 and 9 of the degradation policy).

The payments stub's "acted, replied late" fault: the hold or charge takes effect, but
the answer comes after our timeout. The answer alone cannot tell it from "nothing
happened", so the hold is released, and the charge is looked up at payments by its
idempotency key: recorded once as charged, never turned into debt (ADR 0002).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from shared.settings import Settings
from tests.e2e.conftest import (
    Ids,
    backdate,
    eventually,
    ledger,
    new_offer,
    order_row,
    payment_op,
    set_fault,
    start,
    summary_row,
)

pytestmark = pytest.mark.usefixtures("reset_faults")

LATE_MS = 1_500  # well past base_settings.payment_timeout_seconds (0.5 s)


async def test_hold_that_landed_on_a_rejected_start_is_released(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    running_worker: None,
) -> None:
    rider, scooter = ids.rider(trusted=False), ids.scooter()
    offer = await new_offer(api, rider, scooter)
    assert offer["deposit"] > 0
    await set_fault(stubs, "payments", reply_delay_ms=LATE_MS)

    response = await api.post("/orders", json={"offer_token": offer["token"]})

    assert response.status_code == 503, response.text
    assert response.json()["code"] == "dependency_unavailable"
    assert response.headers["retry-after"] == str(base_settings.serving.retry_after_seconds)
    order = await db.fetchrow("SELECT id, status FROM orders WHERE user_id = $1", rider)
    assert order is not None
    assert order["status"] == "rejected"
    assert (await ledger(stubs, str(order["id"])))["held"] == offer["deposit"]  # it landed
    await set_fault(stubs, "payments", reply_delay_ms=0)

    async def released() -> dict[str, Any] | None:
        money = await ledger(stubs, str(order["id"]))
        return money if money["released"] == offer["deposit"] else None

    money = await eventually(released)
    assert money is not None
    assert money["charged"] == 0
    assert money["held"] == offer["deposit"]
    # nothing left behind: the rider starts a ride right away
    ride = await start(api, rider, scooter)
    assert (await api.post(f"/orders/{ride['id']}/finish", json={})).status_code == 200


async def test_charge_that_landed_but_was_not_recorded_is_recorded_once(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    running_worker: None,
) -> None:
    rider = ids.rider(trusted=False)
    ride = await start(api, rider, ids.scooter())
    await backdate(db, ride["id"], 90)
    charged_before = (await summary_row(db, rider))["total_charged"]
    await set_fault(stubs, "payments", reply_delay_ms=LATE_MS)

    finished = await api.post(f"/orders/{ride['id']}/finish", json={})

    assert finished.status_code == 200, finished.text  # the rider stops regardless
    body = finished.json()
    total = 90 * ride["price_per_minute"] // 60 + ride["price_unlock"]
    assert (body["status"], body["total_amount"], body["payment_status"]) == (
        "finished",
        total,
        "pending",
    )
    assert (await ledger(stubs, ride["id"]))["charged"] == total  # it landed, unrecorded
    await set_fault(stubs, "payments", reply_delay_ms=0)

    async def recorded() -> bool:
        return bool((await order_row(db, ride["id"]))["payment_status"] == "charged")

    await eventually(recorded)
    again = await api.post(f"/orders/{ride['id']}/finish", json={})
    assert again.json()["total_amount"] == total
    money = await ledger(stubs, ride["id"])
    assert [e["kind"] for e in money["entries"]].count("charge") == 1
    assert money["charged"] == total
    assert money["released"] == max(ride["deposit"] - total, 0)
    assert (await summary_row(db, rider))["total_charged"] == charged_before + total


async def test_charge_that_lands_while_every_reply_is_late_is_charged_not_debt(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    running_worker: None,
) -> None:
    """Issue 8: payments takes the charge but every answer, of every retry, comes after
    our timeout. The lookup finds it done: charged, the ledger agrees with our rows."""
    rider = ids.rider(trusted=False)
    ride = await start(api, rider, ids.scooter())
    await backdate(db, ride["id"], 90)
    charged_before = (await summary_row(db, rider))["total_charged"]
    await set_fault(stubs, "payments", reply_delay_ms=LATE_MS)

    finished = await api.post(f"/orders/{ride['id']}/finish", json={})

    assert finished.status_code == 200, finished.text
    assert finished.json()["payment_status"] == "pending"
    total = 90 * ride["price_per_minute"] // 60 + ride["price_unlock"]

    async def settled() -> str | None:
        status = str((await order_row(db, ride["id"]))["payment_status"])
        return None if status == "pending" else status

    assert await eventually(settled, timeout=20) == "charged"  # replies still late
    order = await order_row(db, ride["id"])
    op = await payment_op(db, ride["id"], "charge")
    assert op["state"] == "done"
    summary = await summary_row(db, rider)
    assert (summary["total_charged"], summary["debt"]) == (charged_before + total, 0)
    money = await ledger(stubs, ride["id"])
    assert money["charged"] == order["total_amount"] == total
    assert [e["kind"] for e in money["entries"]].count("charge") == 1
    assert money["released"] == max(ride["deposit"] - total, 0)
    # no debt: the rider is offered the next ride
    assert (await new_offer(api, rider, ids.scooter()))["user_id"] == rider


async def test_hold_that_landed_is_released_while_every_reply_is_late(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    running_worker: None,
) -> None:
    rider = ids.rider(trusted=False)
    offer = await new_offer(api, rider, ids.scooter())
    await set_fault(stubs, "payments", reply_delay_ms=LATE_MS)

    response = await api.post("/orders", json={"offer_token": offer["token"]})

    assert response.status_code == 503, response.text
    (order,) = await db.fetch(
        "SELECT id, status FROM orders WHERE offer_id = $1::uuid", offer["id"]
    )
    assert order["status"] == "rejected"

    async def release_done() -> bool:
        return bool((await payment_op(db, order["id"], "release"))["state"] == "done")

    await eventually(release_done, timeout=20)  # the replies are still late
    money = await ledger(stubs, str(order["id"]))
    assert money["held"] == money["released"] == offer["deposit"]
    assert money["charged"] == 0


async def test_unknown_rider_while_users_is_down_gets_the_raised_deposit(
    api: AsyncTestClient[Any], stubs: str, ids: Ids
) -> None:
    rider, scooter = ids.rider(trusted=True, total_debt=0), ids.scooter()  # never seen by us
    zone_id = httpx.get(f"{stubs}/scooter-data", params={"id": scooter}).json()["zone_id"]
    zone = httpx.get(f"{stubs}/tariff-zone-data", params={"id": zone_id}).json()
    await set_fault(stubs, "users", outage=True)

    offer = await new_offer(api, rider, scooter)

    # not trusted, and deposit * deposit_multiplier (the stubs' configs say 1.25)
    assert offer["deposit"] == int(zone["default_deposit"] * 1.25)
    assert offer["price_unlock"] == zone["price_unlock"]


async def test_our_recorded_debt_refuses_an_unknown_rider_while_users_is_down(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids
) -> None:
    rider = ids.rider()
    await db.execute(
        "INSERT INTO user_summary (user_id, debt) VALUES ($1, 700)"
        " ON CONFLICT (user_id) DO UPDATE SET debt = 700",
        rider,
    )
    await set_fault(stubs, "users", outage=True)

    response = await api.post("/offers", json={"user_id": rider, "scooter_id": ids.scooter()})

    assert response.status_code == 402, response.text
    assert response.json()["code"] == "user_has_debt"
