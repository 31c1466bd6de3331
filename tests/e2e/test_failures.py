"""The degradation policy of DOMAIN.md, end to end: real Postgres, the real stubs with faults.

Each test asserts outcomes: what the rider was answered, which rows are stored, what the
payments ledger says (nothing lost, nothing half-done, no hold without a ride).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from command_api import rides, worker
from command_api.external import ExternalServices
from shared.domain import PricingInputs
from shared.offer_token import OfferSigner
from shared.settings import Settings
from tests.conftest import ADMIN
from tests.e2e.conftest import (
    Ids,
    backdate,
    command_client,
    command_deps,
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

STUB_SURGE, STUB_DISCOUNT = 2.0, 0.75  # the stubs' default configs


# --- helpers ----------------------------------------------------------------------------------


def stub_get(stubs: str, path: str, record_id: str) -> dict[str, Any]:
    """A record straight from the stubs (call before faulting that service)."""
    response = httpx.get(f"{stubs}{path}", params={"id": record_id}, timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def scooter_and_zone(stubs: str, scooter_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    scooter = stub_get(stubs, "/scooter-data", scooter_id)
    return scooter, stub_get(stubs, "/tariff-zone-data", scooter["zone_id"])


def scooter_with_unlock_price(ids: Ids, stubs: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A fresh scooter whose zone charges an unlock price (so "no subscription" shows)."""
    while True:
        sid = ids.scooter()
        scooter, zone = scooter_and_zone(stubs, sid)
        if zone["price_unlock"] > 0:
            return sid, scooter, zone


def per_minute(zone_price: int, charge: int, surge: float, discount: float) -> int:
    price = int(zone_price * surge)
    return int(price * discount) if charge < 28 else price


def prices(offer: dict[str, Any]) -> tuple[int, int, int]:
    return offer["price_per_minute"], offer["price_unlock"], offer["deposit"]


def inputs(settings: Settings, offer: dict[str, Any]) -> PricingInputs:
    """What the offer was priced from (its sealed token carries it)."""
    signer = OfferSigner(settings.offers.key_bytes())
    return signer.verify(offer["token"], rides.utcnow()).inputs


def assert_unavailable(response: httpx.Response, settings: Settings, service: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "dependency_unavailable"
    assert body["service"] == service
    assert response.headers["retry-after"] == str(settings.serving.retry_after_seconds)


async def orders_of(db: asyncpg.Pool, user_id: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM orders WHERE user_id = $1 AND created_at > now() - interval '1 hour'"
            " ORDER BY created_at",
            user_id,
        )
    )


async def assert_nothing_held_for(db: asyncpg.Pool, user_id: str, scooter_id: str) -> None:
    """No active ride, no taken slot, no live order for the user; the scooter is free."""
    assert await db.fetchval("SELECT count(*) FROM active_rides WHERE user_id = $1", user_id) == 0
    assert (
        await db.fetchval("SELECT count(*) FROM active_rides WHERE scooter_id = $1", scooter_id)
        == 0
    )
    slots = await db.fetchval("SELECT active_rides FROM user_summary WHERE user_id = $1", user_id)
    assert slots in (None, 0)
    live = [o["status"] for o in await orders_of(db, user_id)]
    assert not {"starting", "active"} & set(live), live


# --- scooters: critical, fail fast --------------------------------------------------------------


@pytest.mark.parametrize("fault", ["outage", "slow"])
async def test_scooters_unavailable_refuses_the_offer_with_retry_after(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    fault: str,
) -> None:
    rider, scooter = ids.rider(), ids.scooter()
    if fault == "outage":
        await set_fault(stubs, "scooters", outage=True)
    else:
        slow = int(base_settings.external.http_timeout_seconds * 1000) + 300
        await set_fault(stubs, "scooters", latency_ms=slow)

    began = time.monotonic()
    response = await api.post("/offers", json={"user_id": rider, "scooter_id": scooter})
    elapsed = time.monotonic() - began

    assert_unavailable(response, base_settings, "scooters")
    # fail fast: one try and one retry, each bounded by the timeout
    assert elapsed < 2 * base_settings.external.http_timeout_seconds + 1.0
    assert await orders_of(db, rider) == []
    assert await db.fetchval("SELECT count(*) FROM user_summary WHERE user_id = $1", rider) == 0
    await assert_nothing_held_for(db, rider, scooter)

    # and the same request works as soon as scooters is back
    await set_fault(stubs, "scooters", outage=False, latency_ms=0)
    await new_offer(api, rider, scooter)


# --- payments at start: critical, nothing left behind ------------------------------------------


async def test_payments_down_at_start_rejects_and_frees_everything(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids, base_settings: Settings
) -> None:
    rider, scooter, other_scooter = ids.rider(trusted=False), ids.scooter(), ids.scooter()
    offer = await new_offer(api, rider, scooter)
    assert offer["deposit"] > 0
    await set_fault(stubs, "payments", outage=True)

    key = {"Idempotency-Key": f"start-{uuid.uuid4()}"}
    response = await api.post("/orders", json={"offer_token": offer["token"]}, headers=key)

    assert_unavailable(response, base_settings, "payments")
    (order,) = await db.fetch("SELECT * FROM orders WHERE offer_id = $1::uuid", offer["id"])
    assert (order["status"], order["payment_status"]) == ("rejected", "failed")
    await assert_nothing_held_for(db, rider, scooter)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM offer_redemptions WHERE offer_id = $1::uuid", offer["id"]
        )
        == 0
    )
    hold = await payment_op(db, order["id"], "hold")
    assert hold["state"] == "gave_up"
    # the refusal was certain (503 before any effect): nothing to release
    assert (
        await db.fetchval(
            "SELECT count(*) FROM payment_operations WHERE order_id = $1 AND kind = 'release'",
            order["id"],
        )
        == 0
    )
    money = await ledger(stubs, str(order["id"]))
    assert money["held"] == 0
    assert money["entries"] == []
    # the rejected order is not a ride
    finish = await api.post(f"/orders/{order['id']}/finish", json={})
    assert finish.status_code == 404

    await set_fault(stubs, "payments", outage=False)
    # the rider's slot is free: a ride on another scooter starts
    other = await start(api, rider, other_scooter)
    assert other["status"] == "active"
    done = await api.post(f"/orders/{other['id']}/finish", json={})
    assert done.json()["status"] == "cancelled"
    # the offer (and its scooter) can be used again, even with the same Idempotency-Key
    again = await api.post("/orders", json={"offer_token": offer["token"]}, headers=key)
    assert again.status_code == 201, again.text
    ride = again.json()
    assert (ride["status"], ride["payment_status"]) == ("active", "held")
    assert (await ledger(stubs, ride["id"]))["held"] == offer["deposit"]
    await api.post(f"/orders/{ride['id']}/finish", json={})


async def test_a_declined_deposit_hold_is_a_402_and_locks_nothing(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids
) -> None:
    """A card payments declines (402) is the rider's to fix, not a retry-later outage
    (issue 8, break8): 402 ``payment_declined`` without Retry-After, nothing moved, and
    the same offer starts the ride once the card is accepted (ADR 0002)."""
    rider, scooter = ids.rider(trusted=False), ids.scooter()  # a trusted rider holds 0
    offer = await new_offer(api, rider, scooter)
    assert offer["deposit"] > 0, offer  # a start that holds nothing asks payments nothing
    await set_fault(stubs, "payments", decline=True)
    key = {"Idempotency-Key": f"start-{uuid.uuid4()}"}

    refused = await api.post("/orders", json={"offer_token": offer["token"]}, headers=key)

    assert refused.status_code == 402, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "payment_declined"
    assert "retry-after" not in refused.headers
    (order,) = await db.fetch("SELECT * FROM orders WHERE offer_id = $1::uuid", offer["id"])
    assert (order["status"], order["payment_status"]) == ("rejected", "failed")
    await assert_nothing_held_for(db, rider, scooter)
    assert (await payment_op(db, order["id"], "hold"))["state"] == "gave_up"
    assert not await db.fetchval(
        "SELECT count(*) FROM payment_operations WHERE order_id = $1 AND kind = 'release'",
        order["id"],
    )
    money = await ledger(stubs, str(order["id"]))
    assert (money["held"], money["entries"]) == (0, [])
    # no debt, no lock-out: the card is updated and the same offer (same key) starts it
    assert await db.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", rider) in (None, 0)
    await set_fault(stubs, "payments", decline=False)
    again = await api.post("/orders", json={"offer_token": offer["token"]}, headers=key)
    assert again.status_code == 201, again.text
    ride = again.json()
    assert (ride["status"], ride["payment_status"]) == ("active", "held")
    assert (await ledger(stubs, ride["id"]))["held"] == offer["deposit"]
    await api.post(f"/orders/{ride['id']}/finish", json={})


async def test_payments_slow_at_start_rejects_and_the_worker_releases_a_late_hold(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    worker_deps: rides.Deps,
) -> None:
    rider, scooter = ids.rider(trusted=False), ids.scooter()
    offer = await new_offer(api, rider, scooter)
    latency = base_settings.external.payment_timeout_seconds + 0.3
    await set_fault(stubs, "payments", latency_ms=int(latency * 1000))

    response = await api.post("/orders", json={"offer_token": offer["token"]})

    assert_unavailable(response, base_settings, "payments")
    (order,) = await db.fetch("SELECT * FROM orders WHERE offer_id = $1::uuid", offer["id"])
    assert (order["status"], order["payment_status"]) == ("rejected", "failed")
    await assert_nothing_held_for(db, rider, scooter)
    # a timeout is ambiguous: the hold may have landed, so its release is owed
    release = await payment_op(db, order["id"], "release")
    assert (release["state"], release["amount"]) == ("pending", 0)

    # payments answers again and, as a real provider may, had executed the hold after all
    # (once the first call, still being worked on there, is done: one call per key)
    await set_fault(stubs, "payments", latency_ms=0)

    async def first_call_done() -> bool:
        found = await worker_deps.services.payment_operation(str(order["id"]), "hold")
        return found.state != "in_progress"

    await eventually(first_call_done)
    late = httpx.post(
        f"{stubs}/hold-money-for-order",
        json={"user_id": rider, "order_id": str(order["id"]), "amount": offer["deposit"]},
        timeout=5,
    )
    late.raise_for_status()
    await worker.process_due_operations(worker_deps)

    assert (await payment_op(db, order["id"], "release"))["state"] == "done"
    money = await ledger(stubs, str(order["id"]))
    assert money["held"] == money["released"] == offer["deposit"]
    assert money["charged"] == 0
    assert (await order_row(db, order["id"]))["status"] == "rejected"
    # and the offer can start its ride now
    ride = await api.post("/orders", json={"offer_token": offer["token"]})
    assert ride.status_code == 201, ride.text
    await api.post(f"/orders/{ride.json()['id']}/finish", json={})


class DiesAfterHold(ExternalServices):
    """Payments that hold the money, then never answer: the process dies right after."""

    async def hold(self, user_id: str, order_id: str, amount: int) -> None:
        await super().hold(user_id, order_id, amount)
        await asyncio.Event().wait()


class DiesDuringHold(ExternalServices):
    """The process dies while the hold request is on its way."""

    async def hold(self, user_id: str, order_id: str, amount: int) -> None:
        await asyncio.Event().wait()


@pytest.mark.parametrize("services", [DiesDuringHold, DiesAfterHold], ids=["during", "after"])
async def test_start_that_died_around_its_hold_is_undone_by_the_worker(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    running_worker: None,
    services: type[ExternalServices],
) -> None:
    """The process stops between "reserved" and "activated": the worker undoes the start."""
    rider, scooter = ids.rider(trusted=False), ids.scooter()
    offer = await new_offer(api, rider, scooter)
    settings = base_settings.replace(payments={"stuck_hold_seconds": 1})

    async with command_deps(settings, db, services) as deps:
        verified = deps.signer.verify(offer["token"], rides.utcnow())
        starting = asyncio.create_task(rides.start_ride(deps, verified))

        async def stuck() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await db.fetchrow(
                "SELECT * FROM orders WHERE offer_id = $1 AND status = 'starting'", verified.id
            )
            if row is None or services is DiesDuringHold:
                return row
            return row if (await ledger(stubs, str(row["id"])))["held"] else None

        order = await eventually(stuck)
        assert order is not None
        starting.cancel()  # the process "dies"
        with pytest.raises(asyncio.CancelledError):
            await starting
    # left behind: a reserved scooter and slot, an order that is not a ride
    assert (await order_row(db, order["id"]))["status"] == "starting"
    assert await db.fetchval("SELECT count(*) FROM active_rides WHERE scooter_id = $1", scooter)
    finish = await api.post(f"/orders/{order['id']}/finish", json={})
    assert finish.status_code == 404

    async def undone() -> bool:
        row = await order_row(db, order["id"])
        release = await db.fetchrow(
            "SELECT state FROM payment_operations WHERE order_id = $1 AND kind = 'release'",
            order["id"],
        )
        return row["status"] == "rejected" and release is not None and release["state"] == "done"

    await eventually(undone)
    assert (await payment_op(db, order["id"], "hold"))["state"] == "gave_up"
    await assert_nothing_held_for(db, rider, scooter)
    money = await ledger(stubs, str(order["id"]))
    assert money["held"] == money["released"]
    assert money["held"] == (offer["deposit"] if services is DiesAfterHold else 0)
    assert money["charged"] == 0
    # the offer is free again
    ride = await api.post("/orders", json={"offer_token": offer["token"]})
    assert ride.status_code == 201, ride.text
    await api.post(f"/orders/{ride.json()['id']}/finish", json={})


# --- payments at finish: the ride ends, the charge is retried ----------------------------------


async def test_payments_down_at_finish_ends_the_ride_and_charges_later(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    running_worker: None,
) -> None:
    rider = ids.rider(trusted=False)
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 120)
    await set_fault(stubs, "payments", outage=True)

    response = await api.post(f"/orders/{order['id']}/finish", json={})

    assert response.status_code == 200, response.text
    done = response.json()
    total = 120 * order["price_per_minute"] // 60 + order["price_unlock"]
    assert (done["status"], done["payment_status"]) == ("finished", "pending")
    assert done["total_amount"] == total
    assert (await ledger(stubs, order["id"]))["charged"] == 0
    await assert_nothing_held_for(db, rider, order["scooter_id"])

    await set_fault(stubs, "payments", outage=False)

    async def charged() -> bool:
        return bool((await order_row(db, order["id"]))["payment_status"] == "charged")

    await eventually(charged)
    money = await ledger(stubs, order["id"])
    assert money["charged"] == total
    assert [e["kind"] for e in money["entries"]].count("charge") == 1
    assert money["released"] == max(order["deposit"] - total, 0)
    summary = await summary_row(db, rider)
    assert (summary["total_charged"], summary["debt"]) == (total, 0)
    assert summary["last_payment_status"] == "charged"
    # a repeated finish answers the settled order and charges nothing more
    repeat = await api.post(f"/orders/{order['id']}/finish", json={})
    assert repeat.json()["payment_status"] == "charged"
    assert (await ledger(stubs, order["id"]))["charged"] == total


async def test_payments_staying_down_past_the_attempt_limit_is_still_charged_when_back(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    running_worker: None,
) -> None:
    """Issue 8: payments down for the whole retry window says nothing about the rider's
    card, so the charge stays owed (not debt) and is taken when payments is back."""
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 60)
    await set_fault(stubs, "payments", outage=True)
    response = await api.post(f"/orders/{order['id']}/finish", json={})
    assert response.json()["payment_status"] == "pending"
    total = response.json()["total_amount"]
    assert total > 0

    async def retried_past_limit() -> bool:
        op = await payment_op(db, order["id"], "charge")
        return bool(op["attempts"] > base_settings.payments.max_attempts + 1)

    await eventually(retried_past_limit)
    op = await payment_op(db, order["id"], "charge")
    assert op["state"] == "pending"
    assert (await order_row(db, order["id"]))["payment_status"] == "pending"
    assert (await db.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", rider)) == 0
    assert (await new_offer(api, rider, ids.scooter()))["deposit"] >= 0  # not refused

    await set_fault(stubs, "payments", outage=False)

    async def charged() -> bool:
        return bool((await order_row(db, order["id"]))["payment_status"] == "charged")

    await eventually(charged)
    assert (await payment_op(db, order["id"], "charge"))["state"] == "done"
    summary = await summary_row(db, rider)
    assert (summary["debt"], summary["total_charged"]) == (0, total)
    money = await ledger(stubs, order["id"])
    assert money["charged"] == total
    assert [e["kind"] for e in money["entries"]].count("charge") == 1


async def test_payments_declining_at_finish_becomes_the_users_debt(
    api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    base_settings: Settings,
    running_worker: None,
) -> None:
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 60)
    await set_fault(stubs, "payments", decline=True)
    response = await api.post(f"/orders/{order['id']}/finish", json={})
    assert response.json()["payment_status"] == "pending"
    total = response.json()["total_amount"]
    assert total == 60 * order["price_per_minute"] // 60 + order["price_unlock"] > 0
    scooter = ids.scooter()
    offer = await new_offer(api, rider, scooter)  # priced before the debt was recorded

    async def in_debt() -> bool:
        return bool((await order_row(db, order["id"]))["payment_status"] == "debt")

    await eventually(in_debt)
    op = await payment_op(db, order["id"], "charge")
    assert op["state"] == "gave_up"
    assert op["attempts"] == base_settings.payments.max_attempts
    summary = await summary_row(db, rider)
    assert (summary["debt"], summary["total_charged"]) == (total, 0)
    assert summary["last_payment_status"] == "debt"
    assert (await ledger(stubs, order["id"]))["charged"] == 0

    # the card works again, but the rider owes us: no new offer, no ride, nothing reserved
    await set_fault(stubs, "payments", decline=False)
    no_offer = await api.post("/offers", json={"user_id": rider, "scooter_id": scooter})
    assert no_offer.status_code == 402
    assert no_offer.json()["code"] == "user_has_debt"
    refused = await api.post("/orders", json={"offer_token": offer["token"]})
    assert refused.status_code in (402, 409)
    assert refused.json()["code"] == "user_has_debt"
    assert [str(o["id"]) for o in await orders_of(db, rider)] == [order["id"]]
    await assert_nothing_held_for(db, rider, scooter)
    # the debt is final: the worker does not charge it later
    assert (await ledger(stubs, order["id"]))["charged"] == 0


# --- users: last known profile, else conservative ----------------------------------------------


async def test_users_down_keeps_the_last_known_profile(
    api: AsyncTestClient[Any], stubs: str, ids: Ids, base_settings: Settings
) -> None:
    rider = ids.rider(has_subscribtion=True, trusted=True)
    scooter, data, zone = scooter_with_unlock_price(ids, stubs)
    seen = await new_offer(api, rider, scooter)
    expected_minute = per_minute(
        zone["price_per_minute"], data["charge"], STUB_SURGE, STUB_DISCOUNT
    )
    assert prices(seen) == (expected_minute, 0, 0)

    await set_fault(stubs, "users", outage=True)
    offer = await new_offer(api, rider, scooter)

    assert prices(offer) == (expected_minute, 0, 0)  # subscriber and trusted, as last seen
    assert inputs(base_settings, offer).user_source == "last_known"


async def test_users_down_prices_an_unseen_user_conservatively(
    api: AsyncTestClient[Any], stubs: str, ids: Ids, base_settings: Settings
) -> None:
    rider = ids.rider(has_subscribtion=True, trusted=True)  # never asked for by the app
    scooter, data, zone = scooter_with_unlock_price(ids, stubs)
    await set_fault(stubs, "users", outage=True)

    offer = await new_offer(api, rider, scooter)

    expected_minute = per_minute(
        zone["price_per_minute"], data["charge"], STUB_SURGE, STUB_DISCOUNT
    )
    # no subscription (unlock = zone's), not trusted, and the raised deposit (issue 8, item 9)
    raised = int(zone["default_deposit"] * 1.25)  # the stubs' deposit_multiplier
    assert prices(offer) == (expected_minute, zone["price_unlock"], raised)
    used = inputs(base_settings, offer)
    assert used.user_source == "conservative"
    assert not used.has_subscription
    assert not used.trusted


async def test_users_flaky_never_fails_an_offer(
    api: AsyncTestClient[Any], stubs: str, ids: Ids
) -> None:
    rider, scooter = ids.rider(), ids.scooter()
    await set_fault(stubs, "users", error_rate=0.7)
    for _ in range(10):
        await new_offer(api, rider, scooter)


# --- configs: at most once per period, last good, else defaults --------------------------------


@pytest.mark.usefixtures("reset_configs")
async def test_configs_down_keeps_the_last_good_value(
    base_settings: Settings, database: str, stubs: str
) -> None:
    settings = base_settings.replace(external={"configs_refresh_seconds": 0})
    async with command_client(settings) as api:
        httpx.post(
            f"{stubs}/admin/configs", json={"surge": 3.0}, headers=ADMIN, timeout=5
        ).raise_for_status()
        live = await new_offer(api, "user-1", "scooter-1")  # zone-1: 12/min, charge 57
        assert live["price_per_minute"] == 36
        assert inputs(settings, live).configs_source == "live"

        await set_fault(stubs, "configs", outage=True)
        offer = await new_offer(api, "user-1", "scooter-1")

    assert offer["price_per_minute"] == 36  # surge 3 kept, not the default 1.0
    used = inputs(settings, offer)
    assert (used.configs_source, used.surge) == ("last_good", 3.0)


async def test_configs_never_fetched_use_the_builtin_defaults(
    base_settings: Settings, database: str, stubs: str
) -> None:
    settings = base_settings.replace(
        external={"configs_refresh_seconds": 0},
        pricing={"surge_default": 1.5, "low_charge_discount_default": 0.5},
    )
    await set_fault(stubs, "configs", outage=True)
    async with command_client(settings) as api:
        normal = await new_offer(api, "user-1", "scooter-1")  # charge 57
        low = await new_offer(api, "user-1", "scooter-2")  # charge 20

    assert prices(normal) == (18, 45, 300)  # int(12 x 1.5)
    assert prices(low) == (9, 45, 300)  # int(18 x 0.5)
    assert inputs(settings, normal).configs_source == "defaults"


@pytest.mark.usefixtures("reset_configs")
async def test_configs_are_fetched_at_most_once_per_refresh_period(
    base_settings: Settings, database: str, stubs: str
) -> None:
    settings = base_settings.replace(external={"configs_refresh_seconds": 60})
    async with command_client(settings) as api:
        first = await new_offer(api, "user-1", "scooter-1")
        httpx.post(
            f"{stubs}/admin/configs", json={"surge": 3.0}, headers=ADMIN, timeout=5
        ).raise_for_status()
        second = await new_offer(api, "user-1", "scooter-1")
    assert first["price_per_minute"] == second["price_per_minute"] == 24  # surge 2 until refresh
    async with command_client(settings) as api:
        assert (await new_offer(api, "user-1", "scooter-1"))["price_per_minute"] == 36


async def test_configs_fetch_cut_short_by_a_failed_offer_is_not_counted(
    base_settings: Settings, database: str, stubs: str
) -> None:
    """A configs fetch abandoned because scooters failed must not pin the defaults."""
    settings = base_settings.replace(external={"configs_refresh_seconds": 60})
    async with command_client(settings) as api:
        await set_fault(stubs, "configs", latency_ms=200)
        await set_fault(stubs, "scooters", outage=True)
        failed = await api.post("/offers", json={"user_id": "user-1", "scooter_id": "scooter-1"})
        assert failed.status_code == 503
        await set_fault(stubs, "scooters", outage=False)
        await set_fault(stubs, "configs", latency_ms=0)

        offer = await new_offer(api, "user-1", "scooter-1")

    assert offer["price_per_minute"] == 24  # the stubs' surge 2, not the default 1.0
    assert inputs(settings, offer).configs_source == "live"


# --- zones: fresh cache, else base tariff ------------------------------------------------------


async def test_zones_down_uses_a_fresh_cached_tariff(
    base_settings: Settings, database: str, stubs: str, ids: Ids
) -> None:
    rider = ids.rider(has_subscribtion=False, trusted=False, total_debt=0)
    scooter, data, zone = scooter_with_unlock_price(ids, stubs)
    expected = (
        per_minute(zone["price_per_minute"], data["charge"], STUB_SURGE, STUB_DISCOUNT),
        zone["price_unlock"],
        zone["default_deposit"],
    )
    async with command_client(base_settings) as api:
        assert prices(await new_offer(api, rider, scooter)) == expected
        await set_fault(stubs, "zones", outage=True)
        offer = await new_offer(api, rider, scooter)
    assert prices(offer) == expected
    assert inputs(base_settings, offer).zone_source == "cache"


def base_tariff_settings(base_settings: Settings, **external: Any) -> Settings:
    """Settings with a base tariff no zone of the stubs has, so its use is visible."""
    return base_settings.replace(
        pricing={"base_price_per_minute": 7, "base_price_unlock": 33, "base_deposit": 444},
        external=external,
    )


async def test_zones_down_with_nothing_cached_uses_the_base_tariff(
    base_settings: Settings, database: str, stubs: str, ids: Ids
) -> None:
    rider = ids.rider(has_subscribtion=False, trusted=False, total_debt=0)
    scooter = ids.scooter()
    data = stub_get(stubs, "/scooter-data", scooter)
    settings = base_tariff_settings(base_settings)
    await set_fault(stubs, "zones", outage=True)
    async with command_client(settings) as api:
        offer = await new_offer(api, rider, scooter)
    assert prices(offer) == (per_minute(7, data["charge"], STUB_SURGE, STUB_DISCOUNT), 33, 444)
    assert inputs(settings, offer).zone_source == "base_tariff"


@pytest.mark.parametrize("freshness", [0, 1])
async def test_zones_down_with_a_stale_tariff_uses_the_base_tariff(
    base_settings: Settings, database: str, stubs: str, ids: Ids, freshness: int
) -> None:
    rider = ids.rider(has_subscribtion=False, trusted=False, total_debt=0)
    scooter = ids.scooter()
    data = stub_get(stubs, "/scooter-data", scooter)
    settings = base_tariff_settings(base_settings, zone_freshness_seconds=freshness)
    async with command_client(settings) as api:
        live = await new_offer(api, rider, scooter)
        assert inputs(settings, live).zone_source == "live"
        await asyncio.sleep(freshness + 0.1)  # the cached tariff is now past its freshness
        await set_fault(stubs, "zones", outage=True)
        offer = await new_offer(api, rider, scooter)
    assert prices(offer) == (per_minute(7, data["charge"], STUB_SURGE, STUB_DISCOUNT), 33, 444)
    assert inputs(settings, offer).zone_source == "base_tariff"


async def test_stale_tariff_is_refetched_when_zones_is_up(
    base_settings: Settings, database: str, stubs: str, ids: Ids
) -> None:
    rider, scooter = ids.rider(), ids.scooter()
    settings = base_settings.replace(external={"zone_freshness_seconds": 1})
    async with command_client(settings) as api:
        await new_offer(api, rider, scooter)
        assert inputs(settings, await new_offer(api, rider, scooter)).zone_source == "cache"
        await asyncio.sleep(1.1)
        assert inputs(settings, await new_offer(api, rider, scooter)).zone_source == "live"
