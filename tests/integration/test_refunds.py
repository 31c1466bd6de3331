"""Refunds and releases at the payments stub, over HTTP and through our client
(``ExternalServices.refund``/``release``), against the real ``python -m stubs`` server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from command_api.external import ExternalServices, ServiceError, make_http_client
from shared.settings import Settings
from tests.conftest import ADMIN


@pytest.fixture
async def client(stubs: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stubs, timeout=5) as client:
        yield client


@pytest.fixture
async def services(base_settings: Settings, stubs: str) -> AsyncIterator[ExternalServices]:
    http = make_http_client(base_settings)
    try:
        yield ExternalServices(http, base_settings)
    finally:
        await http.aclose()


def new_order() -> str:
    return f"order-{uuid.uuid4()}"


async def pay(
    client: httpx.AsyncClient, operation: str, order_id: str, amount: int, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/{operation}-money-for-order",
        json={"user_id": "user-1", "order_id": order_id, "amount": amount, **extra},
    )


async def ledger(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    answer = await client.get("/ledger", params={"order_id": order_id}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def set_fault(client: httpx.AsyncClient, **fault: Any) -> None:
    (await client.post("/admin/faults", json=fault, headers=ADMIN)).raise_for_status()


async def charged(client: httpx.AsyncClient, amount: int, hold: int = 300) -> str:
    order = new_order()
    assert (await pay(client, "hold", order, hold)).status_code == 200
    assert (await pay(client, "clear", order, amount)).status_code == 200
    return order


# --- refunds ------------------------------------------------------------------------------------


async def test_partial_refunds_are_recorded_once_per_key(client: httpx.AsyncClient) -> None:
    order = await charged(client, 200)
    assert (await pay(client, "refund", order, 50, refund_key="k1")).status_code == 200
    assert (await pay(client, "refund", order, 50, refund_key="k1")).status_code == 200  # replay
    assert (await pay(client, "refund", order, 30, refund_key="k2")).status_code == 200
    money = await ledger(client, order)
    assert (money["charged"], money["refunded"]) == (200, 80)
    refunds = [(e["amount"], e["key"]) for e in money["entries"] if e["kind"] == "refund"]
    assert refunds == [(50, "k1"), (30, "k2")]


async def test_refunds_never_exceed_the_charge(client: httpx.AsyncClient) -> None:
    order = await charged(client, 100)
    assert (await pay(client, "refund", order, 101, refund_key="a")).status_code == 409
    assert (await pay(client, "refund", order, 100, refund_key="a")).status_code == 200
    answer = await pay(client, "refund", order, 1, refund_key="b")
    assert answer.status_code == 409
    assert answer.json()["code"] == "payment_conflict"
    assert (await ledger(client, order))["refunded"] == 100


async def test_a_refund_key_reused_with_another_amount_conflicts(client: httpx.AsyncClient) -> None:
    order = await charged(client, 100)
    assert (await pay(client, "refund", order, 10, refund_key="k")).status_code == 200
    assert (await pay(client, "refund", order, 20, refund_key="k")).status_code == 409
    assert (await ledger(client, order))["refunded"] == 10


async def test_nothing_to_refund_before_a_charge(client: httpx.AsyncClient) -> None:
    order = new_order()
    assert (await pay(client, "hold", order, 300)).status_code == 200
    assert (await pay(client, "refund", order, 1, refund_key="k")).status_code == 409
    assert (await ledger(client, order))["refunded"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "user-1", "order_id": "o", "amount": 0, "refund_key": "k"},
        {"user_id": "user-1", "order_id": "o", "amount": -5, "refund_key": "k"},
        {"user_id": "user-1", "order_id": "o", "amount": 5, "refund_key": ""},
        {"user_id": "user-1", "order_id": "o", "amount": 5, "refund_key": "k" * 256},
        {"user_id": "user-1", "order_id": "o", "amount": 5},
        {"user_id": "user-1", "order_id": "o", "amount": "5", "refund_key": "k"},
    ],
)
async def test_malformed_refunds_are_4xx(client: httpx.AsyncClient, body: Any) -> None:
    answer = await client.post("/refund-money-for-order", json=body)
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


# --- release of a hold left behind ---------------------------------------------------------------


async def test_release_frees_the_hold_once(client: httpx.AsyncClient) -> None:
    order = new_order()
    assert (await pay(client, "hold", order, 300)).status_code == 200
    assert (await pay(client, "release", order, 300)).status_code == 200
    assert (await pay(client, "release", order, 300)).status_code == 200  # replay
    money = await ledger(client, order)
    assert (money["held"], money["released"], money["charged"]) == (300, 300, 0)
    assert [e["kind"] for e in money["entries"]] == ["hold", "release"]


async def test_release_refuses_what_is_not_held(client: httpx.AsyncClient) -> None:
    order = new_order()
    assert (await pay(client, "release", order, 300)).status_code == 409  # nothing held
    assert (await pay(client, "hold", order, 300)).status_code == 200
    assert (await pay(client, "release", order, 200)).status_code == 409  # not the hold
    assert (await pay(client, "clear", order, 48)).status_code == 200
    assert (await pay(client, "release", order, 300)).status_code == 409  # cleared already


async def test_a_debt_settled_after_its_hold_was_released_releases_nothing_twice(
    client: httpx.AsyncClient,
) -> None:
    order = new_order()
    assert (await pay(client, "hold", order, 300)).status_code == 200
    assert (await pay(client, "release", order, 300)).status_code == 200
    assert (await pay(client, "clear", order, 48)).status_code == 200  # the debt, charged later
    money = await ledger(client, order)
    assert (money["held"], money["charged"], money["released"]) == (300, 48, 300)
    assert [e["kind"] for e in money["entries"]] == ["hold", "release", "charge"]


# --- our client ----------------------------------------------------------------------------------


async def test_client_refund_and_release(
    client: httpx.AsyncClient, services: ExternalServices
) -> None:
    order = await charged(client, 120)
    await services.refund("user-1", order, 20, "key-1")
    await services.refund("user-1", order, 20, "key-1")
    assert (await ledger(client, order))["refunded"] == 20

    held = new_order()
    await services.hold("user-1", held, 300)
    await services.release("user-1", held, 300)
    assert (await ledger(client, held))["released"] == 300


async def test_client_refused_refund_is_a_clear_error(
    client: httpx.AsyncClient, services: ExternalServices
) -> None:
    order = await charged(client, 10)
    with pytest.raises(ServiceError) as refused:
        await services.refund("user-1", order, 11, "too-much")
    assert refused.value.reason == "HTTP 409"
    assert not refused.value.ambiguous
    assert (await ledger(client, order))["refunded"] == 0


@pytest.mark.usefixtures("reset_faults")
async def test_client_refund_with_payments_down_is_unambiguous(
    client: httpx.AsyncClient, services: ExternalServices
) -> None:
    order = await charged(client, 100)
    await set_fault(client, service="payments", outage=True)
    with pytest.raises(ServiceError) as down:
        await services.refund("user-1", order, 10, "k")
    assert down.value.reason == "HTTP 503"
    assert not down.value.ambiguous  # 503: payments says it did nothing
    await set_fault(client, service="payments", outage=False)
    assert (await ledger(client, order))["refunded"] == 0


@pytest.mark.usefixtures("reset_faults")
async def test_client_refund_on_500_is_ambiguous_and_safe_to_repeat(
    client: httpx.AsyncClient, services: ExternalServices
) -> None:
    order = await charged(client, 100)
    await set_fault(client, service="payments", error_rate=1.0)
    with pytest.raises(ServiceError) as failed:
        await services.refund("user-1", order, 10, "k")
    assert failed.value.ambiguous
    await set_fault(client, service="payments", error_rate=0.0)
    await services.refund("user-1", order, 10, "k")  # the retry with the same key
    await services.refund("user-1", order, 10, "k")
    assert (await ledger(client, order))["refunded"] == 10


@pytest.mark.usefixtures("reset_faults")
async def test_client_tells_a_decline_from_a_call_in_progress(
    client: httpx.AsyncClient, services: ExternalServices
) -> None:
    order = new_order()
    await set_fault(client, service="payments", decline=True)
    with pytest.raises(ServiceError) as declined:
        await services.clear("user-1", order, 48)
    assert (declined.value.declined, declined.value.ambiguous) == (True, False)
    absent = await services.payment_operation(order, "charge")
    assert (absent.state, absent.amount) == ("absent", 0)

    # the first call outlives our timeout at payments; the retry finds it still there
    await set_fault(client, service="payments", decline=False, latency_ms=1_500)
    with pytest.raises(ServiceError) as late:
        await services.clear("user-1", order, 48)
    assert late.value.ambiguous
    await set_fault(client, service="payments", latency_ms=0)
    with pytest.raises(ServiceError) as busy:
        await services.clear("user-1", order, 48)
    assert busy.value.reason == "HTTP 409"
    assert (busy.value.ambiguous, busy.value.declined) == (True, False)
    assert (await services.payment_operation(order, "charge")).state == "in_progress"
    await asyncio.sleep(1.2)
    done = await services.payment_operation(order, "charge")
    assert (done.state, done.amount) == ("done", 48)
    await services.clear("user-1", order, 48)  # and the key replays ok
    assert [e["kind"] for e in (await ledger(client, order))["entries"]] == ["charge"]


async def test_client_looks_up_refunds_by_their_key(
    client: httpx.AsyncClient, services: ExternalServices
) -> None:
    order = await charged(client, 100)
    await services.refund("user-1", order, 30, "k1")
    found = await services.payment_operation(order, "refund", "k1")
    assert (found.operation, found.state, found.amount) == ("refund", "done", 30)
    assert (await services.payment_operation(order, "refund", "k2")).state == "absent"
