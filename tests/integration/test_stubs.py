"""The external services' stubs, over HTTP against the real ``python -m stubs`` server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import msgspec
import pytest

from shared.domain import ConfigsAnswer, ScooterData, TariffZone, UserProfile
from shared.errors import UserHasDebt
from shared.pricing import Price, quote
from shared.settings import Settings
from stubs import DataSet, StubSettings
from tests.conftest import ADMIN, start_process, stop_process, wait_http
from tests.ports import free_port


@pytest.fixture
async def client(stubs: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stubs, timeout=5, headers=ADMIN) as client:
        yield client


async def fetch(client: httpx.AsyncClient, path: str, record_id: str) -> Any:
    answer = await client.get(path, params={"id": record_id})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def price(client: httpx.AsyncClient, scooter_id: str, user_id: str) -> Price:
    scooter = msgspec.convert(await fetch(client, "/scooter-data", scooter_id), ScooterData)
    zone = msgspec.convert(await fetch(client, "/tariff-zone-data", scooter.zone_id), TariffZone)
    user = msgspec.convert(await fetch(client, "/user-profile", user_id), UserProfile)
    configs = msgspec.convert((await client.get("/configs")).json(), ConfigsAnswer)
    return quote(scooter, zone, user, configs.price_coeff_settings)


def new_order() -> str:
    return f"order-{uuid.uuid4()}"


async def pay(
    client: httpx.AsyncClient, operation: str, order_id: str, amount: int, user_id: str = "user-1"
) -> httpx.Response:
    return await client.post(
        f"/{operation}-money-for-order",
        json={"user_id": user_id, "order_id": order_id, "amount": amount},
    )


async def set_fault(client: httpx.AsyncClient, **fault: Any) -> None:
    (await client.post("/admin/faults", json=fault)).raise_for_status()


# --- the fixed records reproduce DOMAIN.md's vectors -------------------------------------------


async def test_fixed_records(client: httpx.AsyncClient) -> None:
    assert await fetch(client, "/tariff-zone-data", "zone-1") == {
        "id": "zone-1",
        "price_per_minute": 12,
        "price_unlock": 45,
        "default_deposit": 300,
    }
    assert await fetch(client, "/scooter-data", "scooter-1") == {
        "id": "scooter-1",
        "zone_id": "zone-1",
        "charge": 57,
    }
    assert await fetch(client, "/scooter-data", "scooter-2") == {
        "id": "scooter-2",
        "zone_id": "zone-1",
        "charge": 20,
    }
    assert await fetch(client, "/user-profile", "user-1") == {
        "id": "user-1",
        "has_subscribtion": False,
        "trusted": False,
        "rides_count": 0,
        "current_debt": 0,
        "total_debt": 0,
        "last_payment_status": None,
    }
    assert (await client.get("/configs")).json() == {
        "price_coeff_settings": {
            "surge": 2.0,
            "low_charge_discount": 0.75,
            "low_charge_threshold": 28,
            "deposit_multiplier": 1.25,
            "deposit_debt_threshold": 10_000,
            "free_ride_seconds": 5,
        }
    }


@pytest.mark.parametrize(
    ("scooter_id", "user_id", "expected"),
    [
        ("scooter-1", "user-1", (24, 45, 300)),
        ("scooter-2", "user-1", (18, 45, 300)),
        ("scooter-1", "user-2", (24, 0, 300)),
        ("scooter-1", "user-3", (24, 45, 0)),
        ("scooter-1", "user-4", (24, 45, 375)),
    ],
)
async def test_domain_vectors(
    client: httpx.AsyncClient, scooter_id: str, user_id: str, expected: tuple[int, int, int]
) -> None:
    got = await price(client, scooter_id, user_id)
    assert (got.price_per_minute, got.price_unlock, got.deposit) == expected


async def test_user_with_current_debt_is_refused(client: httpx.AsyncClient) -> None:
    with pytest.raises(UserHasDebt):
        await price(client, "scooter-1", "user-5")


async def test_predictable_ids_for_tests(client: httpx.AsyncClient) -> None:
    for n in range(3, 21):
        scooter = await fetch(client, "/scooter-data", f"scooter-{n}")
        assert scooter["zone_id"] == "zone-1"
        assert scooter["charge"] >= 28
    for n in range(6, 21):
        user = await fetch(client, "/user-profile", f"user-{n}")
        assert not user["has_subscribtion"]
        assert not user["trusted"]
        assert user["current_debt"] == user["total_debt"] == 0


# --- the generated data set ----------------------------------------------------------------------


async def test_data_set_size(client: httpx.AsyncClient) -> None:
    assert (await client.get("/scooter-data", params={"id": "scooter-10000"})).status_code == 200
    assert (await client.get("/user-profile", params={"id": "user-100000"})).status_code == 200
    assert (await client.get("/tariff-zone-data", params={"id": "zone-10"})).status_code == 200
    for path, record_id in [
        ("/scooter-data", "scooter-10001"),
        ("/user-profile", "user-100001"),
        ("/tariff-zone-data", "zone-11"),
        ("/scooter-data", "scooter-0"),
        ("/scooter-data", "scooter-01"),
        ("/scooter-data", "user-1"),
        ("/user-profile", ""),
    ]:
        answer = await client.get(path, params={"id": record_id})
        assert answer.status_code == 404, (path, record_id)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["status"] == 404


async def test_data_set_shape(client: httpx.AsyncClient) -> None:
    scooters = [await fetch(client, "/scooter-data", f"scooter-{n}") for n in range(21, 321)]
    assert any(s["charge"] < 28 for s in scooters)
    assert all(0 <= s["charge"] <= 100 for s in scooters)
    assert len({s["zone_id"] for s in scooters}) > 1
    users = [await fetch(client, "/user-profile", f"user-{n}") for n in range(21, 621)]
    assert any(u["current_debt"] > 0 for u in users)
    assert any(u["total_debt"] > 10_000 for u in users)
    assert any(u["has_subscribtion"] for u in users)
    assert any(u["trusted"] for u in users)
    for user in users:
        assert user["current_debt"] >= 0
        assert user["total_debt"] >= user["current_debt"]
        assert not (user["trusted"] and user["total_debt"])


async def test_same_seed_same_records(
    client: httpx.AsyncClient, stub_settings: StubSettings
) -> None:
    local = DataSet(
        seed=stub_settings.seed,
        scooters=stub_settings.scooters,
        zones=stub_settings.zones,
        users=stub_settings.users,
    )
    for n in (21, 4_321, 10_000):
        served = await fetch(client, "/scooter-data", f"scooter-{n}")
        assert served == msgspec.to_builtins(local.scooter(f"scooter-{n}"))
    for n in (21, 54_321, 100_000):
        served = await fetch(client, "/user-profile", f"user-{n}")
        assert served == msgspec.to_builtins(local.user(f"user-{n}"))
    assert await fetch(client, "/tariff-zone-data", "zone-7") == msgspec.to_builtins(
        local.zone("zone-7")
    )


# --- payments ledger -----------------------------------------------------------------------------


async def test_hold_then_clear_charges_and_releases_the_rest(client: httpx.AsyncClient) -> None:
    order = new_order()
    assert (await pay(client, "hold", order, 300)).json() == {"status": "ok"}
    assert (await pay(client, "clear", order, 48)).json() == {"status": "ok"}
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert ledger["order_id"] == order
    assert ledger["user_id"] == "user-1"
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 48, 252)
    assert [(e["kind"], e["amount"]) for e in ledger["entries"]] == [
        ("hold", 300),
        ("charge", 48),
        ("release", 252),
    ]


async def test_clear_of_zero_releases_the_whole_hold(client: httpx.AsyncClient) -> None:
    order = new_order()
    await pay(client, "hold", order, 300)
    await pay(client, "clear", order, 0)
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 0, 300)


async def test_charge_may_exceed_the_hold(client: httpx.AsyncClient) -> None:
    order = new_order()
    await pay(client, "hold", order, 300)
    assert (await pay(client, "clear", order, 1_000)).status_code == 200
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 1_000, 0)


async def test_clear_without_hold_still_charges(client: httpx.AsyncClient) -> None:
    order = new_order()
    assert (await pay(client, "clear", order, 48)).status_code == 200
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (0, 48, 0)
    assert [e["kind"] for e in ledger["entries"]] == ["charge"]


async def test_ledger_of_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ledger", params={"order_id": new_order()})).status_code == 404


async def test_hold_and_clear_are_idempotent(client: httpx.AsyncClient) -> None:
    order = new_order()
    for _ in range(2):
        assert (await pay(client, "hold", order, 300)).status_code == 200
    for _ in range(2):
        assert (await pay(client, "clear", order, 48)).status_code == 200
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert [e["kind"] for e in ledger["entries"]] == ["hold", "charge", "release"]
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 48, 252)


async def test_repeats_with_another_amount_conflict(client: httpx.AsyncClient) -> None:
    order = new_order()
    await pay(client, "hold", order, 300)
    assert (await pay(client, "hold", order, 301)).status_code == 409
    await pay(client, "clear", order, 48)
    answer = await pay(client, "clear", order, 49)
    assert answer.status_code == 409
    assert answer.json()["code"] == "payment_conflict"
    assert (await pay(client, "hold", order, 300)).status_code == 409  # settled: no new hold
    assert (await pay(client, "clear", order, 48, user_id="user-2")).status_code == 409
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 48, 252)


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "user-1", "order_id": "o", "amount": -1},
        {"user_id": "user-1", "order_id": "o", "amount": "10"},
        {"user_id": "user-1", "order_id": "o", "amount": 1.5},
        {"user_id": "user-1", "amount": 10},
        {"user_id": "", "order_id": "o", "amount": 10},
        [],
    ],
)
async def test_malformed_payment_is_4xx(client: httpx.AsyncClient, body: Any) -> None:
    for operation in ("hold", "clear"):
        answer = await client.post(f"/{operation}-money-for-order", json=body)
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
    assert (await client.get("/ledger", params={"order_id": "o"})).status_code == 404


async def test_malformed_requests_are_4xx(client: httpx.AsyncClient) -> None:
    assert (await client.get("/scooter-data")).status_code == 400
    assert (await client.get("/ledger")).status_code == 400
    bad = await client.post(
        "/hold-money-for-order", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert (await client.post("/admin/configs", json={"surge": -1})).status_code == 400
    assert (await client.post("/admin/configs", json={"surges": 3})).status_code == 400
    assert (await client.post("/admin/faults", json={"outage": True})).status_code == 400
    too_flaky = await client.post("/admin/faults", json={"service": "users", "error_rate": 2})
    assert too_flaky.status_code == 400


# --- payments: operations by idempotency key, declines, one call per key at a time --------------


async def operation(
    client: httpx.AsyncClient, order_id: str, name: str, refund_key: str | None = None
) -> dict[str, Any]:
    params = {"id": order_id, "operation": name}
    if refund_key is not None:
        params["refund_key"] = refund_key
    async with httpx.AsyncClient(base_url=client.base_url) as anyone:  # no admin token
        answer = await anyone.get("/payment-operation", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_an_operation_is_found_by_its_idempotency_key(client: httpx.AsyncClient) -> None:
    order = new_order()
    for name in ("hold", "charge", "release"):
        assert (await operation(client, order, name)) == {
            "order_id": order,
            "operation": name,
            "state": "absent",
            "amount": 0,
        }
    await pay(client, "hold", order, 300)
    assert (await operation(client, order, "hold"))["state"] == "done"
    assert (await operation(client, order, "charge"))["state"] == "absent"
    await pay(client, "clear", order, 48)
    found = await operation(client, order, "charge")
    assert (found["state"], found["amount"]) == ("done", 48)
    # the rest of the hold that the charge gave back is not the release operation
    assert (await operation(client, order, "release"))["state"] == "absent"
    refund = await client.post(
        "/refund-money-for-order",
        json={"user_id": "user-1", "order_id": order, "amount": 8, "refund_key": "r1"},
    )
    assert refund.status_code == 200
    assert (await operation(client, order, "refund", "r1"))["amount"] == 8
    assert (await operation(client, order, "refund", "r2"))["state"] == "absent"

    released = new_order()
    await pay(client, "hold", released, 300)
    await pay(client, "release", released, 300)
    found = await operation(client, released, "release")
    assert (found["state"], found["amount"]) == ("done", 300)


@pytest.mark.parametrize(
    "params",
    [
        {"operation": "charge"},
        {"id": "o"},
        {"id": "o", "operation": "clear"},
        {"id": "o", "operation": "refund"},
        {"id": "o", "operation": "charge", "refund_key": "k"},
        {"id": "o" * 257, "operation": "charge"},
        {"id": "o", "operation": "refund", "refund_key": "k" * 256},
    ],
)
async def test_malformed_operation_lookup_is_4xx(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    answer = await client.get("/payment-operation", params=params)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.usefixtures("reset_faults")
async def test_operation_lookup_is_faulted_like_payments(client: httpx.AsyncClient) -> None:
    await set_fault(client, service="payments", outage=True)
    answer = await client.get("/payment-operation", params={"id": "o", "operation": "charge"})
    assert answer.status_code == 503
    await set_fault(client, service="payments", outage=False, reply_delay_ms=5_000)
    started = time.perf_counter()
    assert (await operation(client, "o", "charge"))["state"] == "absent"
    assert time.perf_counter() - started < 2  # a read never acts, so it never answers late


@pytest.mark.usefixtures("reset_faults")
async def test_a_declined_payment_moves_nothing_and_may_succeed_later(
    client: httpx.AsyncClient,
) -> None:
    done, order = new_order(), new_order()
    await pay(client, "hold", done, 300)
    await pay(client, "clear", done, 48)
    await pay(client, "hold", order, 300)
    await set_fault(client, service="payments", decline=True)

    declined = await pay(client, "clear", order, 48)
    assert declined.status_code == 402
    assert declined.headers["content-type"] == "application/problem+json"
    assert declined.json()["code"] == "payment_declined"
    assert (await pay(client, "hold", new_order(), 300)).status_code == 402
    assert (await operation(client, order, "charge"))["state"] == "absent"
    # what is done stays done, and giving money back is never declined
    assert (await pay(client, "clear", done, 48)).status_code == 200
    assert (await pay(client, "release", order, 300)).status_code == 200
    other = new_order()
    assert (await pay(client, "clear", other, 0)).status_code == 200

    await set_fault(client, service="payments", decline=False)
    later = new_order()
    await set_fault(client, service="payments", decline=True)
    assert (await pay(client, "clear", later, 48)).status_code == 402
    await set_fault(client, service="payments", decline=False)
    assert (await pay(client, "clear", later, 48)).status_code == 200  # the card was updated
    ledger = (await client.get("/ledger", params={"order_id": later})).json()
    assert [(e["kind"], e["amount"]) for e in ledger["entries"]] == [("charge", 48)]


@pytest.mark.usefixtures("reset_faults")
async def test_payments_works_on_one_call_per_key_at_a_time(client: httpx.AsyncClient) -> None:
    order = new_order()
    await set_fault(client, service="payments", latency_ms=3_000)
    first = asyncio.create_task(pay(client, "clear", order, 48))
    await asyncio.sleep(0.3)
    await set_fault(client, service="payments", latency_ms=0)

    assert (await operation(client, order, "charge"))["state"] == "in_progress"
    second = await pay(client, "clear", order, 48)
    assert second.status_code == 409
    assert second.json()["code"] == "operation_in_progress"
    # another key of the same order is not in the way
    assert (await pay(client, "hold", order, 300)).status_code == 200
    assert (await first).status_code == 200
    found = await operation(client, order, "charge")
    assert (found["state"], found["amount"]) == ("done", 48)
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert [e["kind"] for e in ledger["entries"]].count("charge") == 1


@pytest.mark.usefixtures("reset_faults")
async def test_every_payments_call_can_reply_late(client: httpx.AsyncClient) -> None:
    """ "Acted, replied late" holds for releases and refunds too."""
    held, charged = new_order(), new_order()
    await pay(client, "hold", held, 300)
    await pay(client, "clear", charged, 48)
    await set_fault(client, service="payments", reply_delay_ms=2_000)
    with pytest.raises(httpx.TimeoutException):
        await client.post(
            "/release-money-for-order",
            json={"user_id": "user-1", "order_id": held, "amount": 300},
            timeout=0.3,
        )
    with pytest.raises(httpx.TimeoutException):
        await client.post(
            "/refund-money-for-order",
            json={"user_id": "user-1", "order_id": charged, "amount": 8, "refund_key": "k"},
            timeout=0.3,
        )
    assert (await operation(client, held, "release"))["state"] == "done"
    assert (await operation(client, charged, "refund", "k"))["amount"] == 8


# --- configs -------------------------------------------------------------------------------------


async def test_configs_can_be_changed_and_reset(client: httpx.AsyncClient) -> None:
    try:
        answer = await client.post("/admin/configs", json={"surge": 3.0, "free_ride_seconds": 9})
        assert answer.status_code == 200
        coeffs = (await client.get("/configs")).json()["price_coeff_settings"]
        assert (coeffs["surge"], coeffs["free_ride_seconds"]) == (3.0, 9)
        assert coeffs["low_charge_discount"] == 0.75  # untouched fields keep their value
    finally:
        (await client.post("/admin/configs/reset")).raise_for_status()
    assert (await client.get("/configs")).json()["price_coeff_settings"]["surge"] == 2.0


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("reset_faults")
async def test_outage_takes_down_that_service_only(client: httpx.AsyncClient) -> None:
    await set_fault(client, service="scooters", outage=True)
    down = await client.get("/scooter-data", params={"id": "scooter-1"})
    assert down.status_code == 503
    assert down.json()["code"] == "injected_fault"
    assert (await client.get("/tariff-zone-data", params={"id": "zone-1"})).status_code == 200
    assert (await client.get("/user-profile", params={"id": "user-1"})).status_code == 200
    assert (await client.get("/configs")).status_code == 200
    assert (await pay(client, "hold", new_order(), 1)).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/admin/faults")).status_code == 200


@pytest.mark.usefixtures("reset_faults")
@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("scooters", "/scooter-data?id=scooter-1"),
        ("zones", "/tariff-zone-data?id=zone-1"),
        ("users", "/user-profile?id=user-1"),
        ("configs", "/configs"),
    ],
)
async def test_error_rate_one_always_fails(
    client: httpx.AsyncClient, service: str, path: str
) -> None:
    await set_fault(client, service=service, error_rate=1.0)
    for _ in range(3):
        assert (await client.get(path)).status_code == 500
    await set_fault(client, service=service, error_rate=0.0)
    assert (await client.get(path)).status_code == 200


@pytest.mark.usefixtures("reset_faults")
async def test_error_rate_fails_a_fraction(client: httpx.AsyncClient) -> None:
    await set_fault(client, service="users", error_rate=0.5)
    codes = [
        (await client.get("/user-profile", params={"id": "user-1"})).status_code for _ in range(60)
    ]
    assert set(codes) == {200, 500}


@pytest.mark.usefixtures("reset_faults")
async def test_latency_is_added_to_that_service_only(client: httpx.AsyncClient) -> None:
    await set_fault(client, service="zones", latency_ms=200)
    started = time.perf_counter()
    assert (await client.get("/tariff-zone-data", params={"id": "zone-1"})).status_code == 200
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    assert (await client.get("/scooter-data", params={"id": "scooter-1"})).status_code == 200
    assert time.perf_counter() - started < 0.2


@pytest.mark.usefixtures("reset_faults")
async def test_a_failed_payment_call_records_nothing(client: httpx.AsyncClient) -> None:
    order = new_order()
    await set_fault(client, service="payments", error_rate=1.0)
    assert (await pay(client, "hold", order, 300)).status_code == 500
    assert (await pay(client, "clear", order, 48)).status_code == 500
    await set_fault(client, service="payments", error_rate=0.0, outage=True)
    assert (await pay(client, "hold", order, 300)).status_code == 503
    assert (await client.get("/ledger", params={"order_id": order})).status_code == 404

    await set_fault(client, service="payments", outage=False)
    assert (await pay(client, "hold", order, 300)).status_code == 200
    await set_fault(client, service="payments", outage=True)
    assert (await pay(client, "clear", order, 48)).status_code == 503
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert [e["kind"] for e in ledger["entries"]] == ["hold"]
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 0, 0)


@pytest.mark.usefixtures("reset_faults")
async def test_payments_acted_replied_late_moves_the_money_before_the_caller_times_out(
    client: httpx.AsyncClient,
) -> None:
    """The "acted, replied late" fault: the caller times out, yet the ledger has the entry."""
    order = f"order-late-{uuid.uuid4()}"
    await set_fault(client, service="payments", reply_delay_ms=2_000)
    for kind, amount in (("hold", 300), ("clear", 48)):
        with pytest.raises(httpx.TimeoutException):
            await client.post(
                f"/{kind}-money-for-order",
                json={"user_id": "user-1", "order_id": order, "amount": amount},
                timeout=0.3,
            )
        await set_fault(client, service="payments", reply_delay_ms=0)
        ledger = (await client.get("/ledger", params={"order_id": order})).json()
        assert kind.replace("clear", "charge") in [e["kind"] for e in ledger["entries"]]
        await set_fault(client, service="payments", reply_delay_ms=2_000)
    ledger = (await client.get("/ledger", params={"order_id": order})).json()
    assert (ledger["held"], ledger["charged"], ledger["released"]) == (300, 48, 252)


@pytest.mark.usefixtures("reset_faults")
async def test_fault_switches_are_partial_and_listed(client: httpx.AsyncClient) -> None:
    await set_fault(client, service="users", latency_ms=5)
    answer = await client.post("/admin/faults", json={"service": "users", "error_rate": 0.1})
    assert answer.status_code == 200
    users = next(f for f in answer.json() if f["service"] == "users")
    assert users == {
        "service": "users",
        "outage": False,
        "latency_ms": 5,
        "error_rate": 0.1,
        "reply_delay_ms": 0,
        "decline": False,
    }
    listed = (await client.get("/admin/faults")).json()
    assert {f["service"] for f in listed} == {
        "scooters",
        "zones",
        "users",
        "configs",
        "payments",
        "identity",
    }
    assert users in listed


async def test_unknown_service_is_422_problem(client: httpx.AsyncClient) -> None:
    answer = await client.post("/admin/faults", json={"service": "weather", "outage": True})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 422
    assert problem["code"] == "unknown_service"
    assert {"type", "title", "detail"} <= problem.keys()


def test_faults_from_the_environment(base_settings: Settings, stub_settings: StubSettings) -> None:
    port = free_port()
    settings = base_settings.replace(external={"base_url": f"http://127.0.0.1:{port}"})
    faults = [{"service": "configs", "outage": True}, {"service": "users", "error_rate": 1.0}]
    env = {**stub_settings.replace(port=port).to_env(), "SCOOTERS_STUB_FAULTS": json.dumps(faults)}
    proc = start_process("stubs", settings, env)
    try:
        url = settings.external.base_url
        wait_http(f"{url}/health/live", proc=proc)
        assert httpx.get(f"{url}/configs").status_code == 503
        assert httpx.get(f"{url}/user-profile", params={"id": "user-1"}).status_code == 500
        assert httpx.get(f"{url}/scooter-data", params={"id": "scooter-1"}).status_code == 200
    finally:
        stop_process(proc)


# --- operations ----------------------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    for path in ("/health/live", "/health/ready"):
        answer = await client.get(path)
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


async def test_metrics_count_requests_per_service_and_outcome(client: httpx.AsyncClient) -> None:
    def count(text: str, service: str, outcome: str) -> float:
        line = f'stub_requests_total{{outcome="{outcome}",service="{service}"}} '
        return next(
            (float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)), 0.0
        )

    before = (await client.get("/metrics")).text
    await client.get("/scooter-data", params={"id": "scooter-1"})
    await client.get("/scooter-data", params={"id": "scooter-0"})
    after = (await client.get("/metrics")).text
    assert count(after, "scooters", "ok") == count(before, "scooters", "ok") + 1
    assert count(after, "scooters", "not_found") == count(before, "scooters", "not_found") + 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/faults"),
        ("POST", "/admin/faults"),
        ("POST", "/admin/configs"),
        ("POST", "/admin/configs/reset"),
        ("POST", "/admin/auth/token"),
        ("POST", "/admin/auth/rotate"),
        ("GET", "/ledger?order_id=x"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic abc"])
async def test_admin_endpoints_need_the_admin_token(
    stubs: str, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=stubs, timeout=5) as anonymous:
        answer = await anonymous.request(method, path, json={"surge": 0.01}, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["code"] == "unauthenticated"


async def test_identity_provider_issues_verifiable_tokens(
    client: httpx.AsyncClient, base_settings: Settings
) -> None:
    answer = await client.post("/auth/token", json={"sub": "user-1", "roles": ["rider"]})
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == base_settings.identity.token_ttl_seconds
    jwks = (await client.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert "d" not in key  # public parts only
    claims = jwt.decode(
        body["access_token"],
        jwt.PyJWK.from_dict(key).key,
        algorithms=["RS256"],
        audience=base_settings.identity.audience,
        issuer=base_settings.identity.issuer,
    )
    assert claims["sub"] == "user-1"
    assert claims["roles"] == ["rider"]
    assert claims["exp"] - claims["iat"] == base_settings.identity.token_ttl_seconds
    default = (await client.post("/auth/token", json={"sub": "user-2"})).json()
    assert jwt.decode(default["access_token"], options={"verify_signature": False})["roles"] == [
        "rider"
    ]
    for bad in ({"sub": ""}, {"sub": "u", "roles": ["admin"]}, {"roles": ["rider"]}, {"sub": 5}):
        assert (await client.post("/auth/token", json=bad)).status_code == 400


# --- issue 8: payments keeps no id that is no id; malformed HTTP is a 400 problem ----------------

NO_IDS = ["o\x00b", "o\nb", "o\r\nX-A: 1", "o\x1b[31m", "o b", "ö", "o\n"]


def assert_problem(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == code


@pytest.mark.parametrize("bad", NO_IDS, ids=["nul", "lf", "crlf", "esc", "space", "utf8", "end-lf"])
async def test_payments_refuse_ids_that_are_no_ids_and_record_nothing(
    client: httpx.AsyncClient, bad: str
) -> None:
    order = new_order()
    for operation in ("hold", "clear", "release"):
        for body in (
            {"user_id": bad, "order_id": order, "amount": 10},
            {"user_id": "user-1", "order_id": bad, "amount": 10},
        ):
            answer = await client.post(f"/{operation}-money-for-order", json=body)
            assert_problem(answer, 400, "malformed_body")
    refund = {"user_id": "user-1", "order_id": order, "amount": 1, "refund_key": "k"}
    for field in ("user_id", "order_id"):
        answer = await client.post("/refund-money-for-order", json={**refund, field: bad})
        assert_problem(answer, 400, "malformed_body")
    if bad.isascii() and bad.isprintable():  # a refund key may hold any printable ASCII
        return
    answer = await client.post("/refund-money-for-order", json={**refund, "refund_key": bad})
    assert_problem(answer, 400, "malformed_body")
    lookup = await client.get("/payment-operation", params={"id": bad, "operation": "hold"})
    assert_problem(lookup, 400, "invalid_request")
    lookup = await client.get(
        "/payment-operation", params={"id": order, "operation": "refund", "refund_key": bad}
    )
    assert_problem(lookup, 400, "invalid_request")
    assert_problem(await client.get("/ledger", params={"order_id": bad}), 400, "invalid_request")
    assert (await client.get("/ledger", params={"order_id": order})).status_code == 404


async def test_payments_still_take_our_ids_and_any_printable_refund_key(
    client: httpx.AsyncClient,
) -> None:
    order = str(uuid.uuid4())  # the command API's order ids
    assert (await pay(client, "hold", order, 300, user_id="user-17")).status_code == 200
    assert (await pay(client, "clear", order, 100, user_id="user-17")).status_code == 200
    key = "Idem potency/key:1 ~!@#$%^&*()"  # an operator's Idempotency-Key
    refund = {"user_id": "user-17", "order_id": order, "amount": 5, "refund_key": key}
    assert (await client.post("/refund-money-for-order", json=refund)).status_code == 200
    found = await client.get(
        "/payment-operation", params={"id": order, "operation": "refund", "refund_key": key}
    )
    assert (found.json()["state"], found.json()["amount"]) == ("done", 5)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /hold-money-for-order HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 30\r\n\r\n{}",
        b"POST /hold-money-for-order HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n",
        b"GET /user-profile?id=user-1 HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"FOO /user-profile?id=user-1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["two-content-lengths", "bad-chunk", "nul", "method"],
)
async def test_stubs_answer_bytes_that_are_no_http_request_like_the_apis(
    stubs: str, request_bytes: bytes
) -> None:
    """400 problem+json ``invalid_request`` with a request id, connection closed (uvicorn's
    own protocol answered a text/plain line)."""
    port = httpx.URL(stubs).port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after it
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/problem+json" in head.lower(), answer
    assert b"x-request-id: " in head.lower(), answer
    assert json.loads(body)["code"] == "invalid_request"


@pytest.mark.usefixtures("reset_faults")
async def test_the_answers_nonsense_fault_replaces_fields_of_a_services_answers(
    client: httpx.AsyncClient,
) -> None:
    huge = "z" * 1_000_000
    await set_fault(client, service="scooters", answer_fields={"zone_id": huge, "charge": "x"})
    scooter = await fetch(client, "/scooter-data", "scooter-1")
    assert scooter == {"id": "scooter-1", "zone_id": huge, "charge": "x"}
    await set_fault(client, service="users", answer_fields={"id": "a\x00b"})
    assert (await fetch(client, "/user-profile", "user-1"))["id"] == "a\x00b"
    await set_fault(client, service="configs", answer_fields={"extra": 1})
    assert (await fetch(client, "/configs", ""))["extra"] == 1
    await set_fault(client, service="payments", answer_fields={"order_id": "o\n"})
    lookup = await client.get("/payment-operation", params={"id": "o-1", "operation": "hold"})
    assert lookup.json()["order_id"] == "o\n"
    await set_fault(client, service="scooters", answer_fields={})  # {}: answers as is again
    assert (await fetch(client, "/scooter-data", "scooter-1"))["zone_id"] == "zone-1"
    # the other switches of a service are kept
    faults = {f["service"]: f for f in (await client.get("/admin/faults")).json()}
    assert faults["users"]["answer_fields"] == {"id": "a\x00b"}
