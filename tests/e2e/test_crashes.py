"""kill -9 of the command API mid-hold and mid-charge, then the client's retry (issue 8, item 5).

The command API runs as a real process; payments answers slowly so the kill lands while
the money call is in flight. Afterwards: what the payments ledger says (no double
charge, no leaked hold), which rows are stored, and that neither the rider nor the
scooter stays locked out longer than the lease.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from shared.settings import Settings
from tests.auth import Tokens
from tests.conftest import start_process, wait_http
from tests.e2e.conftest import (
    Ids,
    backdate,
    command_client,
    eventually,
    ledger,
    new_offer,
    order_row,
    set_fault,
    start,
    summary_row,
)
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("reset_faults")

LEASE = 2.0  # idempotency_lease_seconds of these tests
STUCK = 3  # stuck_hold_seconds
SLOW_PAYMENTS_MS = 700  # long enough to kill the API mid-call, shorter than its timeout


@pytest.fixture(scope="module")
def crash_settings(base_settings: Settings) -> Settings:
    return base_settings.replace(
        serving={"command_port": free_port()},
        external={"payment_timeout_seconds": 1.0},
        payments={"stuck_hold_seconds": STUCK, "idempotency_lease_seconds": LEASE},
    )


@pytest.fixture
def command_process(
    crash_settings: Settings, database: str, stubs: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m command_api`` as its own process, to be killed by the test."""
    proc = start_process("command_api", crash_settings)
    url = f"http://127.0.0.1:{crash_settings.serving.command_port}"
    try:
        wait_http(f"{url}/health/live", proc=proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
async def retry_api(
    crash_settings: Settings, database: str, tokens: Tokens
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The API the client retries against after the crash (same settings, in-process);
    each request carries its rider's bearer token (tests/auth.py)."""
    async with command_client(crash_settings) as client:
        yield client


def post(
    client: AsyncTestClient[Any] | httpx.AsyncClient,
    url: str,
    body: bytes,
    key: str | None,
    auth: dict[str, str],
) -> Any:
    """POST ``body`` as the rider whose ``auth`` header (``Tokens.headers``) is given."""
    headers = {"content-type": "application/json", **auth}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(url, content=body, headers=headers, timeout=10)


async def kill_when(
    proc: subprocess.Popen[bytes], request: asyncio.Task[httpx.Response], ready: Any
) -> None:
    """kill -9 the API once ``ready()`` holds (the money call is in flight)."""
    await eventually(ready, timeout=10, interval=0.02)
    await asyncio.sleep(0.1)
    proc.kill()
    proc.wait()
    with pytest.raises(httpx.HTTPError):
        await request


async def test_kill_mid_hold_then_retry_with_the_key_starts_the_ride_after_the_lease(
    command_process: tuple[subprocess.Popen[bytes], str],
    retry_api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    running_worker: None,
    tokens: Tokens,
) -> None:
    proc, url = command_process
    rider, scooter = ids.rider(trusted=False), ids.scooter()
    auth = tokens.headers(rider)
    offer = await new_offer(retry_api, rider, scooter)
    body = b'{"offer_token":"' + offer["token"].encode() + b'"}'
    await set_fault(stubs, "payments", latency_ms=SLOW_PAYMENTS_MS)

    async def starting() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await db.fetchrow(
            "SELECT id FROM orders WHERE offer_id = $1 AND status = 'starting'",
            uuid.UUID(offer["id"]),
        )
        return row

    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(post(client, f"{url}/orders", body, "k1", auth))
        await kill_when(proc, request, starting)
    crashed = await starting()
    assert crashed is not None
    await set_fault(stubs, "payments", latency_ms=0)

    # within the lease the claim still counts as in flight
    early = await post(retry_api, "/orders", body, "k1", auth)
    assert early.status_code == 409, early.text
    assert early.json()["code"] == "idempotency_key_in_flight"

    await asyncio.sleep(LEASE)
    retried = await post(retry_api, "/orders", body, "k1", auth)
    assert retried.status_code == 201, retried.text
    ride = retried.json()
    assert ride["status"] == "active"
    assert ride["id"] != str(crashed["id"])
    replay = await post(retry_api, "/orders", body, "k1", auth)
    assert (replay.status_code, replay.json()) == (201, ride)

    # the crashed start is undone and its hold, if it landed, released; one deposit held
    assert (await order_row(db, crashed["id"]))["status"] == "rejected"

    async def released() -> dict[str, Any] | None:
        row = await db.fetchrow(
            "SELECT state FROM payment_operations WHERE order_id = $1 AND kind = 'release'",
            crashed["id"],
        )
        money = await ledger(stubs, str(crashed["id"]))
        done = row is not None and row["state"] == "done" and money["held"] == money["released"]
        return money if done else None

    money = await eventually(released)
    assert money is not None
    assert money["charged"] == 0
    assert (await ledger(stubs, ride["id"]))["held"] == offer["deposit"]
    assert (await summary_row(db, rider))["active_rides"] == 1
    assert await db.fetchval(
        "SELECT order_id FROM active_rides WHERE scooter_id = $1", scooter
    ) == (uuid.UUID(ride["id"]))
    finished = await retry_api.post(f"/orders/{ride['id']}/finish", json={})
    assert finished.status_code == 200, finished.text


async def test_kill_mid_hold_locks_neither_rider_nor_scooter_past_the_stuck_hold_time(
    command_process: tuple[subprocess.Popen[bytes], str],
    retry_api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    tokens: Tokens,
) -> None:
    """No worker running and no Idempotency-Key: the next start undoes the dead one."""
    proc, url = command_process
    rider, scooter = ids.rider(trusted=False), ids.scooter()
    auth = tokens.headers(rider)
    offer = await new_offer(retry_api, rider, scooter)
    body = b'{"offer_token":"' + offer["token"].encode() + b'"}'
    await set_fault(stubs, "payments", latency_ms=SLOW_PAYMENTS_MS)
    offer_id = uuid.UUID(offer["id"])

    async def starting() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await db.fetchrow(
            "SELECT id, created_at FROM orders WHERE offer_id = $1 AND status = 'starting'",
            offer_id,
        )
        return row

    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(post(client, f"{url}/orders", body, None, auth))
        await kill_when(proc, request, starting)
    crashed = await starting()
    assert crashed is not None
    await set_fault(stubs, "payments", latency_ms=0)

    other = ids.rider()
    other_offer = await new_offer(retry_api, other, scooter)
    busy = await retry_api.post("/orders", json={"offer_token": other_offer["token"]})
    assert busy.status_code == 409, busy.text  # the dead start may still be alive: wait
    assert busy.json()["code"] == "scooter_busy"

    await asyncio.sleep(STUCK)
    # the scooter is free for another rider, and the rider may start elsewhere
    taken = await retry_api.post(
        "/orders", json={"offer_token": (await new_offer(retry_api, other, scooter))["token"]}
    )
    assert taken.status_code == 201, taken.text
    elsewhere = await start(retry_api, rider, ids.scooter())
    assert elsewhere["status"] == "active"
    crashed_row = await order_row(db, crashed["id"])
    assert crashed_row["status"] == "rejected"
    release = await db.fetchrow(
        "SELECT state FROM payment_operations WHERE order_id = $1 AND kind = 'release'",
        crashed["id"],
    )
    assert release is not None  # owed to the worker: the hold may have landed
    for order_id in (taken.json()["id"], elsewhere["id"]):
        assert (await retry_api.post(f"/orders/{order_id}/finish", json={})).status_code == 200


async def test_kill_mid_charge_then_retry_with_the_key_answers_the_ride_and_charges_once(
    command_process: tuple[subprocess.Popen[bytes], str],
    retry_api: AsyncTestClient[Any],
    db: asyncpg.Pool,
    stubs: str,
    ids: Ids,
    running_worker: None,
    tokens: Tokens,
) -> None:
    proc, url = command_process
    rider = ids.rider(trusted=False)
    auth = tokens.headers(rider)
    ride = await start(retry_api, rider, ids.scooter())
    await backdate(db, ride["id"], 120)
    charged_before = (await summary_row(db, rider))["total_charged"]
    await set_fault(stubs, "payments", latency_ms=SLOW_PAYMENTS_MS)

    async def finished() -> bool:
        return bool((await order_row(db, ride["id"]))["status"] == "finished")

    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(
            post(client, f"{url}/orders/{ride['id']}/finish", b"{}", "f1", auth)
        )
        await kill_when(proc, request, finished)
    await set_fault(stubs, "payments", latency_ms=0)
    total = (await order_row(db, ride["id"]))["total_amount"]
    assert total == 120 * ride["price_per_minute"] // 60 + ride["price_unlock"]

    early = await post(retry_api, f"/orders/{ride['id']}/finish", b"{}", "f1", auth)
    assert early.status_code == 409, early.text
    await asyncio.sleep(LEASE)
    retried = await post(retry_api, f"/orders/{ride['id']}/finish", b"{}", "f1", auth)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "finished"
    assert retried.json()["total_amount"] == total

    async def settled() -> bool:
        return bool((await order_row(db, ride["id"]))["payment_status"] == "charged")

    await eventually(settled)
    money = await ledger(stubs, ride["id"])
    assert money["charged"] == total
    assert [e["kind"] for e in money["entries"]].count("charge") == 1
    assert money["held"] == ride["deposit"]
    assert money["released"] == max(ride["deposit"] - total, 0)
    assert (await summary_row(db, rider))["total_charged"] == charged_before + total
