"""Operator commands (docs/operator-api.md) end to end: the real command API (in-process)
on real Postgres and the payments stub, the real worker and projector, and the query
API. Each command is checked for what payments' ledger holds afterwards, what was
recorded (actor, reason), what the query side shows, and for its refusals."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from command_api import operator as operator_commands
from command_api import rides
from query_api.app import create_app as create_query_app
from shared.lifecycle import ride_charge
from shared.settings import Settings
from tests.auth import SUPPORT, Tokens, acting_rider, tokens_for
from tests.conftest import start_process, stop_process
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
)

Client = AsyncTestClient[Any]
Json = dict[str, Any]
WAIT = 15.0


@pytest.fixture(scope="module")
def read_settings(base_settings: Settings, database: str) -> Settings:
    return base_settings.replace(read={"projector_metrics_port": 0})


@pytest.fixture(scope="module")
def projector(read_settings: Settings) -> Iterator[None]:
    """``python -m query_api.projector`` beside the module's tests."""
    proc = start_process("query_api.projector", read_settings)
    yield
    stop_process(proc)


@pytest.fixture(scope="module")
async def query(read_settings: Settings, stubs: str) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_query_app(read_settings)) as client:
        acting_rider(client, tokens_for(read_settings))
        yield client


@pytest.fixture
def operator(tokens: Tokens) -> tuple[str, dict[str, str]]:
    """A support operator of its own: its sub, and the headers of its requests."""
    sub = f"support-{os.urandom(3).hex()}"
    return sub, tokens.headers(sub, SUPPORT)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def charged_ride(api: Client, db: asyncpg.Pool, ids: Ids, seconds: int = 600) -> Json:
    """A ride of ``seconds``, finished and charged (a rider who pays a deposit)."""
    order = await start(api, ids.rider(trusted=False), ids.scooter())
    await backdate(db, order["id"], seconds)
    response = await api.post(f"/orders/{order['id']}/finish", json={})
    assert response.status_code == 200, response.text
    done = cast(Json, response.json())
    assert done["payment_status"] == "charged", done
    assert done["total_amount"] > 0, done
    return done


async def actions(db: asyncpg.Pool, order_id: str) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT action, actor, reason, amount FROM order_actions WHERE order_id = $1 ORDER BY id",
        uuid.UUID(order_id),
    )
    return [tuple(r.values()) for r in rows]


def lines_add_up(receipt: Json) -> None:
    assert sum(line["amount"] for line in receipt["lines"]) == receipt["total"]
    assert all(set(line) == {"kind", "description", "amount"} for line in receipt["lines"])


async def refund(
    api: Client, order_id: str, amount: Any, headers: dict[str, str], key: str | None = None
) -> Any:
    sent = dict(headers)
    if key is not None:
        sent["Idempotency-Key"] = key
    return await api.post(
        f"/orders/{order_id}/refunds",
        json={"amount": amount, "reason": "brake failed"},
        headers=sent,
    )


# --- who may call them ------------------------------------------------------------------------


async def test_riders_and_strangers_are_refused(
    api: Client, db: asyncpg.Pool, ids: Ids, tokens: Tokens
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    rider = tokens.headers(order["user_id"])
    calls = [
        (f"/orders/{order['id']}/end", {"ended_at": at(datetime.now(UTC)), "reason": "r"}),
        (f"/orders/{order['id']}/refunds", {"amount": 1, "reason": "r"}),
        (f"/users/{order['user_id']}/debt/settle", {"reason": "r"}),
    ]
    for path, body in calls:
        as_rider = await api.post(path, json=body, headers={**rider, "Idempotency-Key": "k"})
        assert as_rider.status_code == 403, as_rider.text
        assert as_rider.json()["code"] == "forbidden"
        nobody = await api.post(path, json=body, headers={"Authorization": "Bearer nonsense"})
        assert nobody.status_code == 401, nobody.text
        assert nobody.json()["code"] == "unauthenticated"
    assert (await order_row(db, order["id"]))["status"] == "active"  # nothing happened
    assert await actions(db, order["id"]) == []


# --- ending a ride on the rider's behalf --------------------------------------------------------


async def test_support_ends_a_ride_as_of_a_time_charged_by_the_formula(
    api: Client,
    query: Client,
    projector: None,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
    base_settings: Settings,
) -> None:
    sub, headers = operator
    order = await start(api, ids.rider(trusted=False), ids.scooter())
    await backdate(db, order["id"], 3_600)
    started = (await order_row(db, order["id"]))["started_at"]
    body = {"ended_at": at(started + timedelta(seconds=300)), "reason": "parked since then"}

    response = await api.post(f"/orders/{order['id']}/end", json=body, headers=headers)

    assert response.status_code == 200, response.text
    ended = response.json()
    expected = ride_charge(
        300,
        order["price_per_minute"],
        order["price_unlock"],
        order["free_ride_seconds"],
        max_charged_seconds=base_settings.rides.max_charged_seconds,
        max_cost=base_settings.rides.max_cost,
    )
    assert (ended["status"], ended["duration_seconds"]) == ("finished", 300)
    assert ended["total_amount"] == expected
    assert moment(ended["finished_at"]) == started + timedelta(seconds=300)
    assert ended["receipt"]["total"] == expected
    lines_add_up(ended["receipt"])
    assert (await ledger(stubs, order["id"]))["charged"] == expected
    assert await actions(db, order["id"]) == [("force_end", sub, "parked since then", None)]

    # repeated (even with another time): the stored result, nothing recorded again
    body["ended_at"] = at(started + timedelta(seconds=900))
    again = await api.post(f"/orders/{order['id']}/end", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["total_amount"] == expected
    assert again.json()["version"] == ended["version"]
    assert len(await actions(db, order["id"])) == 1

    async def shown() -> Json:
        screen = (await query.get(f"/orders/{order['id']}")).json()
        return cast(Json, screen) if screen.get("payment_status") == "charged" else {}

    screen = await eventually(shown, timeout=WAIT)
    assert screen["receipt"] == ended["receipt"]
    assert screen["total_amount"] == expected


async def test_ending_refusals(
    api: Client, db: asyncpg.Pool, ids: Ids, operator: tuple[str, dict[str, str]]
) -> None:
    _sub, headers = operator
    order = await start(api, ids.rider(), ids.scooter())
    started = (await order_row(db, order["id"]))["started_at"]
    cases = [
        (order["id"], at(started - timedelta(seconds=1)), 422, "end_before_start"),
        (order["id"], at(datetime.now(UTC) + timedelta(minutes=5)), 422, "end_in_future"),
        ("01a2ffff-0000-7000-8000-000000000000", at(datetime.now(UTC)), 404, "order_not_found"),
        ("not-an-order", at(datetime.now(UTC)), 404, "order_not_found"),
        (order["id"], "2026-11-30T12:30:00", 400, "invalid_request"),  # no offset
    ]
    for order_id, ended_at, status, code in cases:
        response = await api.post(
            f"/orders/{order_id}/end", json={"ended_at": ended_at, "reason": "r"}, headers=headers
        )
        assert response.status_code == status, (ended_at, response.text)
        assert response.json()["code"] == code
    for reason in ("", " ", "x" * 501):
        response = await api.post(
            f"/orders/{order['id']}/end",
            json={"ended_at": at(datetime.now(UTC)), "reason": reason},
            headers=headers,
        )
        assert response.status_code == 400, response.text
    assert (await order_row(db, order["id"]))["status"] == "active"
    assert await actions(db, order["id"]) == []


# --- refunds ------------------------------------------------------------------------------------


async def test_partial_refunds_show_on_receipt_screen_summary_and_ledger(
    api: Client,
    query: Client,
    projector: None,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
) -> None:
    sub, headers = operator
    done = await charged_ride(api, db, ids)
    order_id, charged = done["id"], done["total_amount"]
    key = f"refund-{uuid.uuid4()}"

    first = await refund(api, order_id, 10, headers, key)

    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["order_id"], body["amount"], body["refunded_total"]) == (order_id, 10, 10)
    assert body["receipt"]["total"] == charged - 10
    assert body["receipt"]["lines"][-1] == {
        "kind": "refund",
        "description": "Refund: brake failed",
        "amount": -10,
    }
    lines_add_up(body["receipt"])
    replay = await refund(api, order_id, 10, headers, key)
    assert (replay.status_code, replay.json()) == (201, body)
    second = await refund(api, order_id, charged - 10, headers, f"refund-{uuid.uuid4()}")
    assert second.status_code == 201, second.text
    assert second.json()["refunded_total"] == charged
    assert second.json()["receipt"]["total"] == 0

    money = await ledger(stubs, order_id)
    assert (money["charged"], money["refunded"]) == (charged, charged)
    assert next(e["key"] for e in money["entries"] if e["kind"] == "refund") == key
    assert await actions(db, order_id) == [
        ("refund", sub, "brake failed", 10),
        ("refund", sub, "brake failed", charged - 10),
    ]

    async def shown() -> Json:
        screen = cast(Json, (await query.get(f"/orders/{order_id}")).json())
        receipt = screen.get("receipt") or {}
        return screen if receipt.get("refunded") == charged else {}

    screen = await eventually(shown, timeout=WAIT)
    assert [line["amount"] for line in screen["receipt"]["lines"] if line["kind"] == "refund"] == [
        -10,
        -(charged - 10),
    ]
    lines_add_up(screen["receipt"])
    summary = await query.get(f"/users/{done['user_id']}/summary")
    assert summary.json()["total_charged"] == 0  # the only ride, refunded in full
    receipt = await query.get(f"/orders/{order_id}/receipt")
    assert receipt.json()["receipt"] == screen["receipt"]


async def test_a_refund_under_the_longest_idempotency_key_is_made_once(
    api: Client, db: asyncpg.Pool, ids: Ids, stubs: str, operator: tuple[str, dict[str, str]]
) -> None:
    """The refund key at payments is the caller's Idempotency-Key, which may be 255
    characters long (command_api.idempotency.MAX_KEY_LENGTH): payments takes it."""
    _sub, headers = operator
    done = await charged_ride(api, db, ids)
    key = ("refund-" + uuid.uuid4().hex * 8)[:255]

    first = await refund(api, done["id"], 10, headers, key)
    again = await refund(api, done["id"], 10, headers, key)

    assert first.status_code == 201, first.text
    assert (again.status_code, again.json()) == (201, first.json())
    money = await ledger(stubs, done["id"])
    assert money["refunded"] == 10
    assert [e["key"] for e in money["entries"] if e["kind"] == "refund"] == [key]


async def test_refund_refusals(
    api: Client, db: asyncpg.Pool, ids: Ids, stubs: str, operator: tuple[str, dict[str, str]]
) -> None:
    _sub, headers = operator
    done = await charged_ride(api, db, ids)
    order_id, charged = done["id"], done["total_amount"]
    active = await start(api, ids.rider(), ids.scooter())
    cancelled = await start(api, ids.rider(), ids.scooter())
    assert (await api.post(f"/orders/{cancelled['id']}/finish")).json()["status"] == "cancelled"

    def fresh() -> str:
        return f"refund-{uuid.uuid4()}"

    cases = [
        (order_id, charged + 1, fresh(), 409, "refund_exceeds_charge"),
        (order_id, 0, fresh(), 422, "invalid_refund"),
        (order_id, -5, fresh(), 422, "invalid_refund"),
        (order_id, 5, None, 400, "idempotency_key_required"),
        (active["id"], 5, fresh(), 409, "order_not_charged"),
        (cancelled["id"], 5, fresh(), 409, "order_not_charged"),
        ("01a2ffff-0000-7000-8000-000000000000", 5, fresh(), 404, "order_not_found"),
        (order_id, "5", fresh(), 400, "invalid_request"),
    ]
    for target, amount, key, status, code in cases:
        response = await refund(api, target, amount, headers, key)
        assert response.status_code == status, (amount, key, response.text)
        assert response.json()["code"] == code
    assert (await ledger(stubs, order_id)).get("refunded", 0) == 0
    # a key reused for another amount
    key = fresh()
    assert (await refund(api, order_id, 1, headers, key)).status_code == 201
    reused = await refund(api, order_id, 2, headers, key)
    assert reused.status_code == 422, reused.text
    assert reused.json()["code"] == "idempotency_key_reused"
    assert (await ledger(stubs, order_id))["refunded"] == 1


async def test_concurrent_refunds_never_exceed_the_charge(
    api: Client, db: asyncpg.Pool, ids: Ids, stubs: str, operator: tuple[str, dict[str, str]]
) -> None:
    _sub, headers = operator
    done = await charged_ride(api, db, ids, seconds=1_800)
    order_id, charged = done["id"], done["total_amount"]
    part = charged // 3 + 1  # three of them would exceed the charge, two do not
    answers = await asyncio.gather(
        *(refund(api, order_id, part, headers, f"refund-{i}-{uuid.uuid4()}") for i in range(8))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201, 201] + [409] * 6, [a.text for a in answers]
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"refund_exceeds_charge"}
    money = await ledger(stubs, order_id)
    assert money["refunded"] == 2 * part <= money["charged"] == charged
    refunded = await db.fetchval(
        "SELECT sum(amount) FROM order_refunds WHERE order_id = $1 AND state = 'done'",
        uuid.UUID(order_id),
    )
    assert refunded == 2 * part


async def test_payments_down_answers_503_and_a_retry_refunds_once(
    api: Client,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
    reset_faults: None,
) -> None:
    _sub, headers = operator
    done = await charged_ride(api, db, ids)
    key = f"refund-{uuid.uuid4()}"
    await set_fault(stubs, "payments", outage=True)
    down = await refund(api, done["id"], 7, headers, key)
    assert down.status_code == 503, down.text
    assert down.json()["code"] == "dependency_unavailable"
    assert int(down.headers["retry-after"]) >= 1
    assert (await ledger(stubs, done["id"])).get("refunded", 0) == 0

    await set_fault(stubs, "payments", outage=False)
    retried = await refund(api, done["id"], 7, headers, key)
    assert retried.status_code == 201, retried.text
    assert (await ledger(stubs, done["id"]))["refunded"] == 7


async def ledger_agrees(
    db: asyncpg.Pool, stubs: str, order_id: str, refunded: int, sub: str, charged: int
) -> None:
    """Payments refunded ``refunded`` once per key, and our rows say the same: the done
    refunds add up to it, nothing is pending, one act per refund, the summary lowered
    once."""
    money = await ledger(stubs, order_id)
    refunds = [e for e in money["entries"] if e["kind"] == "refund"]
    rows = await db.fetch(
        "SELECT refund_key, amount, state FROM order_refunds WHERE order_id = $1",
        uuid.UUID(order_id),
    )
    assert money["refunded"] == refunded
    assert sorted((e["key"], e["amount"]) for e in refunds) == sorted(
        (r["refund_key"], r["amount"]) for r in rows
    )
    assert {r["state"] for r in rows} == {"done"}
    assert await actions(db, order_id) == [("refund", sub, "brake failed", refunded)]
    user_id = await db.fetchval(
        "SELECT user_id FROM order_refunds WHERE order_id = $1", uuid.UUID(order_id)
    )
    summary = await db.fetchval(
        "SELECT total_charged FROM user_summary WHERE user_id = $1", user_id
    )
    assert summary == charged - refunded


async def test_a_refund_answered_late_is_found_by_its_key_and_recorded_once(
    api: Client,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
    reset_faults: None,
) -> None:
    """Payments refunds but replies too late (each try times out): the lookup by the
    refund key finds it done, so the request answers 201 and records it once; a repeat
    with the key replays it."""
    sub, headers = operator
    done = await charged_ride(api, db, ids)
    order_id, charged = done["id"], done["total_amount"]
    key = f"refund-{uuid.uuid4()}"
    await set_fault(stubs, "payments", reply_delay_ms=1_500)
    late = await refund(api, order_id, 5, headers, key)
    assert late.status_code == 201, late.text
    assert (late.json()["amount"], late.json()["refunded_total"]) == (5, 5)
    await ledger_agrees(db, stubs, order_id, 5, sub, charged)

    again = await refund(api, order_id, 5, headers, key)
    assert again.status_code == 201, again.text
    assert again.json()["refunded_total"] == 5
    await ledger_agrees(db, stubs, order_id, 5, sub, charged)


async def landed_but_pending(
    db: asyncpg.Pool, stubs: str, order: Json, amount: int, actor: str
) -> str:
    """A refund of ``amount`` that payments made but we never confirmed (the process
    died in between): in payments' ledger, and a pending row (as ``refund`` reserves it)
    a minute old. Returns its refund key."""
    key = f"refund-{uuid.uuid4()}"
    async with httpx.AsyncClient() as client:
        landed = await client.post(
            f"{stubs}/refund-money-for-order",
            json={
                "user_id": order["user_id"],
                "order_id": order["id"],
                "amount": amount,
                "refund_key": key,
            },
        )
    assert landed.status_code == 200, landed.text
    await db.execute(
        "INSERT INTO order_refunds (order_id, refund_key, order_created_at, user_id, amount,"
        " reason, actor, created_at)"
        " SELECT id, $2, created_at, user_id, $3, 'brake failed', $4, now() - interval '1 minute'"
        " FROM orders WHERE id = $1",
        uuid.UUID(order["id"]),
        key,
        amount,
        actor,
    )
    return key


async def test_a_pending_refund_retried_while_payments_is_down_stays_pending(
    api: Client,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
    reset_faults: None,
) -> None:
    """A retry of a refund whose first call may have landed, made while payments is down
    (503: this call did nothing), must not drop the pending refund: the first call did
    land. Once payments is back the retry confirms it, once."""
    sub, headers = operator
    done = await charged_ride(api, db, ids)
    key = await landed_but_pending(db, stubs, done, 5, sub)
    await set_fault(stubs, "payments", outage=True)
    down = await refund(api, done["id"], 5, headers, key)
    assert down.status_code == 503, down.text
    state = await db.fetchval(
        "SELECT state FROM order_refunds WHERE order_id = $1 AND refund_key = $2",
        uuid.UUID(done["id"]),
        key,
    )
    assert state == "pending"  # kept: it counts against the charge
    await set_fault(stubs, "payments", outage=False)
    retried = await refund(api, done["id"], 5, headers, key)
    assert retried.status_code == 201, retried.text
    await ledger_agrees(db, stubs, done["id"], 5, sub, done["total_amount"])


async def test_a_pending_refund_that_landed_is_completed_once_while_replies_are_late(
    api: Client,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
    reset_faults: None,
    worker_deps: rides.Deps,
) -> None:
    """The process died after payments refunded and before the refund was confirmed: a
    pending row (as ``refund`` reserves it) and the refund in payments' ledger. It
    counts against the charge; the worker asks payments again with the same key while
    every reply still comes late, and the lookup lets it confirm the refund, once."""
    sub, _headers = operator
    done = await charged_ride(api, db, ids)
    order_id, charged = done["id"], done["total_amount"]
    await landed_but_pending(db, stubs, done, 5, sub)
    more = await refund(api, order_id, charged - 4, _headers, f"refund-{uuid.uuid4()}")
    assert more.status_code == 409, more.text  # the pending 5 counts
    await set_fault(stubs, "payments", reply_delay_ms=1_500)

    async def retried() -> int:
        await operator_commands.retry_pending_refunds(worker_deps)
        state = await db.fetchval(
            "SELECT state FROM order_refunds WHERE order_id = $1", uuid.UUID(order_id)
        )
        return int(state == "done")

    await eventually(retried, timeout=WAIT, interval=0.5)  # replies still late
    await operator_commands.retry_pending_refunds(worker_deps)  # nothing more to do
    await ledger_agrees(db, stubs, order_id, 5, sub, charged)


# --- settling a debt ----------------------------------------------------------------------------


async def test_a_debt_releases_its_hold_and_settling_it_lets_the_rider_ride_again(
    api: Client,
    query: Client,
    projector: None,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    operator: tuple[str, dict[str, str]],
    reset_faults: None,
    running_worker: None,
) -> None:
    sub, headers = operator
    rider = ids.rider(trusted=False)
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 600)
    await set_fault(stubs, "payments", decline=True)  # the card declines: debt (ADR 0002)
    done = (await api.post(f"/orders/{order['id']}/finish", json={})).json()
    assert done["payment_status"] == "pending"
    amount, deposit = done["total_amount"], order["deposit"]
    assert deposit > 0

    async def debt() -> asyncpg.Record | None:
        row = await order_row(db, order["id"])
        return row if row["payment_status"] == "debt" else None

    await eventually(debt, timeout=WAIT)
    refused = await api.post("/offers", json={"user_id": rider, "scooter_id": ids.scooter()})
    assert refused.status_code == 402, refused.text
    assert (await ledger(stubs, order["id"]))["charged"] == 0

    await set_fault(stubs, "payments", decline=False)  # the card was updated

    async def released() -> Json:
        money = await ledger(stubs, order["id"])
        return money if money["released"] == deposit else {}

    money = await eventually(released, timeout=WAIT)
    assert money["charged"] == 0

    async def receipt_released() -> Json:
        screen = cast(Json, (await query.get(f"/orders/{order['id']}")).json())
        receipt = screen.get("receipt") or {}
        return screen if receipt.get("deposit_released") == deposit else {}

    shown = await eventually(receipt_released, timeout=WAIT)
    assert shown["payment_status"] == "debt"

    settle = await api.post(
        f"/users/{rider}/debt/settle", json={"reason": "card updated"}, headers=headers
    )
    assert settle.status_code == 200, settle.text
    assert settle.json() == {"user_id": rider, "settled": [order["id"]], "debt": 0}
    money = await ledger(stubs, order["id"])
    assert (money["charged"], money["released"], money["held"]) == (amount, deposit, deposit)
    assert await actions(db, order["id"]) == [("settle_debt", sub, "card updated", amount)]
    again = await api.post(f"/users/{rider}/debt/settle", json={"reason": "again"}, headers=headers)
    assert again.json() == {"user_id": rider, "settled": [], "debt": 0}
    assert (await ledger(stubs, order["id"]))["charged"] == amount

    await new_offer(api, rider, ids.scooter())  # the rider may ride again

    async def settled_shown() -> Json:
        summary = cast(Json, (await query.get(f"/users/{rider}/summary")).json())
        return summary if summary.get("debt") == 0 else {}

    summary = await eventually(settled_shown, timeout=WAIT)
    assert (summary["total_charged"], summary["last_payment_status"]) == (amount, "charged")
    screen = cast(Json, (await query.get(f"/orders/{order['id']}")).json())
    assert screen["payment_status"] == "charged"
    assert screen["receipt"]["deposit_released"] == deposit
    lines_add_up(screen["receipt"])


async def test_the_hold_of_a_debt_released_while_replies_are_late_is_released_once(
    api: Client,
    db: asyncpg.Pool,
    ids: Ids,
    stubs: str,
    reset_faults: None,
    running_worker: None,
) -> None:
    """Payments releases the hold left behind by a debt but every reply comes after our
    timeout: the lookup of the release by its key finds it done, so the worker records it
    (operation done, one ``hold_released``) instead of retrying it for as long as the
    replies are late; payments released once."""
    rider = ids.rider(trusted=False)
    order = await start(api, rider, ids.scooter())
    await backdate(db, order["id"], 600)
    # the card declines (debt, ADR 0002; a decline answers at once), and whatever
    # payments does take effect on is answered after our timeout
    await set_fault(stubs, "payments", decline=True, reply_delay_ms=1_500)
    done = (await api.post(f"/orders/{order['id']}/finish", json={})).json()
    assert done["payment_status"] == "pending"
    deposit = order["deposit"]
    assert deposit > 0

    async def debt() -> asyncpg.Record | None:
        row = await order_row(db, order["id"])
        return row if row["payment_status"] == "debt" else None

    await eventually(debt, timeout=WAIT)

    async def release_done() -> bool:
        op = await payment_op(db, order["id"], "release_debt_hold")
        return bool(op["state"] == "done")

    await eventually(release_done, timeout=WAIT)  # the replies are still late
    money = await ledger(stubs, order["id"])
    assert (money["held"], money["released"], money["charged"]) == (deposit, deposit, 0)
    assert [e["kind"] for e in money["entries"]].count("release") == 1
    released_events = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE order_id = $1 AND event_type = 'hold_released'",
        uuid.UUID(order["id"]),
    )
    assert released_events == 1
    assert (await order_row(db, order["id"]))["payment_status"] == "debt"  # still owed


async def test_settling_refusals(
    api: Client, ids: Ids, operator: tuple[str, dict[str, str]]
) -> None:
    _sub, headers = operator
    unknown = await api.post(
        f"/users/never-seen-{uuid.uuid4().hex[:8]}/debt/settle",
        json={"reason": "r"},
        headers=headers,
    )
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["code"] == "user_not_found"
    bad = await api.post("/users/a%20b/debt/settle", json={"reason": "r"}, headers=headers)
    assert bad.status_code in (400, 404, 422), bad.text
    order = await start(api, ids.rider(), ids.scooter())
    nothing = await api.post(
        f"/users/{order['user_id']}/debt/settle", json={"reason": "r"}, headers=headers
    )
    assert nothing.status_code == 200, nothing.text
    assert nothing.json() == {"user_id": order["user_id"], "settled": [], "debt": 0}
    await api.post(f"/orders/{order['id']}/finish")
