"""A ride's receipt and GPS track on the query API, after rides through the real command
API (in-process), on real Postgres and stubs: the receipt's lines add up to what payments
charged, whatever the ride."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from query_api.app import create_app as create_query_app
from shared.settings import Settings
from tests.auth import Tokens, acting_rider, tokens_for
from tests.e2e.conftest import Ids, backdate, ledger, start

Client = AsyncTestClient[Any]
Json = dict[str, Any]
TRACK = [
    {"t": 1_700_000_000.0, "lat": 55.75, "lon": 37.61},
    {"t": 1_700_000_060.0, "lat": 55.751, "lon": 37.611},
    {"t": 1_700_000_120.0, "lat": 55.752, "lon": 37.613},
]


@pytest.fixture(scope="module")
async def query(base_settings: Settings, database: str, stubs: str) -> AsyncIterator[Client]:
    """The query API in-process; each request carries the token of the order's rider
    (or support's, for an order it did not see started; tests/auth.py)."""
    async with AsyncTestClient(create_query_app(base_settings)) as client:
        acting_rider(client, tokens_for(base_settings))
        yield client


async def finish(api: Client, order_id: str, track: list[Json] | None = None) -> Json:
    response = await api.post(f"/orders/{order_id}/finish", json={"track": track or []})
    assert response.status_code == 200, response.text
    return cast(Json, response.json())


async def receipt_of(query: Client, order_id: str) -> Json:
    response = await query.get(f"/orders/{order_id}/receipt")
    assert response.status_code == 200, response.text
    body = cast(Json, response.json())
    assert body["order_id"] == order_id
    return cast(Json, body["receipt"])


@pytest.mark.parametrize("seconds", [7, 61, 600, 3_599])
async def test_receipt_lines_add_up_to_the_charge(
    api: Client, query: Client, db: asyncpg.Pool, ids: Ids, stubs: str, seconds: int
) -> None:
    order = await start(api, ids.rider(trusted=False), ids.scooter())
    await backdate(db, order["id"], seconds)
    ended = await finish(api, order["id"])
    receipt = await receipt_of(query, order["id"])
    money = await ledger(stubs, order["id"])
    assert sum(line["amount"] for line in receipt["lines"]) == receipt["total"]
    assert receipt["total"] == ended["total_amount"] == money["charged"]
    assert receipt["deposit_held"] == order["deposit"] == money["held"]
    assert receipt["deposit_released"] == money["released"]
    assert receipt["payment_status"] == "charged"
    assert {line["kind"] for line in receipt["lines"]} >= {"riding_time", "unlock"}
    assert all(set(line) == {"kind", "description", "amount"} for line in receipt["lines"])


async def test_cancelled_ride_receipt_is_one_free_line(
    api: Client, query: Client, ids: Ids, stubs: str
) -> None:
    order = await start(api, ids.rider(trusted=False), ids.scooter())
    await finish(api, order["id"])
    receipt = await receipt_of(query, order["id"])
    assert [(line["kind"], line["amount"]) for line in receipt["lines"]] == [("cancellation", 0)]
    assert receipt["total"] == 0
    assert receipt["deposit_released"] == receipt["deposit_held"] == order["deposit"]
    assert (await ledger(stubs, order["id"]))["released"] == order["deposit"]


async def test_no_receipt_while_the_ride_is_active(api: Client, query: Client, ids: Ids) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    response = await query.get(f"/orders/{order['id']}/receipt")
    assert response.status_code == 409
    assert response.json()["code"] == "order_not_ended"
    await finish(api, order["id"])


@pytest.mark.parametrize(
    "order_id", ["01a2ffff-0000-7000-8000-000000000000", "not-an-id", "0" * 200]
)
async def test_unknown_order_has_no_receipt_or_track(query: Client, order_id: str) -> None:
    for path in ("receipt", "track"):
        response = await query.get(f"/orders/{order_id}/{path}")
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "order_not_found"


async def test_track_is_the_points_sent_at_finish(
    api: Client, query: Client, db: asyncpg.Pool, ids: Ids
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    empty = await query.get(f"/orders/{order['id']}/track")
    assert empty.status_code == 200
    assert empty.json()["points"] == []
    await backdate(db, order["id"], 120)
    ended = await finish(api, order["id"], TRACK)
    track = (await query.get(f"/orders/{order['id']}/track")).json()
    assert track["points"] == TRACK
    assert track["distance_meters"] == ended["distance_meters"] > 0


async def test_other_spellings_of_an_order_id_are_answered_with_ours(
    api: Client, query: Client, ids: Ids
) -> None:
    """break8 (issue 8): the track echoed the id as sent ("urn:uuid:…", braces, no
    dashes, upper case), so the app saw an order id that is not the order's."""
    order = await start(api, ids.rider(), ids.scooter())
    await finish(api, order["id"])
    oid = order["id"]
    spellings = [f"urn:uuid:{oid}", f"{{{oid}}}", oid.replace("-", ""), oid.upper()]
    for spelled in spellings:
        track = await query.get(f"/orders/{spelled}/track")
        assert track.status_code == 200, (spelled, track.text)
        assert track.json()["order_id"] == oid
        receipt = await query.get(f"/orders/{spelled}/receipt")
        assert receipt.json()["order_id"] == oid, spelled


async def test_only_the_rider_or_support_sees_a_receipt_or_track(
    api: Client, query: Client, ids: Ids, tokens: Tokens
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    await finish(api, order["id"])
    for path in ("receipt", "track"):
        url = f"/orders/{order['id']}/{path}"
        other = await query.get(url, headers=tokens.headers(ids.rider()))
        assert other.status_code == 404, other.text
        assert other.json()["code"] == "order_not_found"
        support = await query.get(url, headers=tokens.headers("support-1", ("support",)))
        assert support.status_code == 200, support.text
        owner = await query.get(url, headers=tokens.headers(order["user_id"]))
        assert owner.status_code == 200, owner.text
        nobody = await query.get(url, headers={"Authorization": "Bearer nonsense"})
        assert nobody.status_code == 401
