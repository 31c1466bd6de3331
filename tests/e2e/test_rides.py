"""Rides through the command API: pricing, the full flow, concurrency, tokens, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from shared.ids import created_at_of, parse_order_id
from shared.offer_token import encode_offer_key, new_offer_key
from shared.settings import Settings
from tests.e2e.conftest import Ids, backdate, command_client, ledger, new_offer, start

# --- pricing vectors of DOMAIN.md (zone-1 = 12/45/300, surge 2, discount 0.75) ---------------


@pytest.mark.parametrize(
    ("user_id", "scooter_id", "expected"),
    [
        ("user-1", "scooter-1", (24, 45, 300)),  # charge 57, plain user
        ("user-1", "scooter-2", (18, 45, 300)),  # charge 20: low-charge discount
        ("user-2", "scooter-1", (24, 0, 300)),  # subscriber: no unlock price
        ("user-3", "scooter-1", (24, 45, 0)),  # trusted: no deposit
        ("user-4", "scooter-1", (24, 45, 375)),  # total debt 20,000: deposit x1.25
    ],
)
async def test_pricing_vectors(
    api: AsyncTestClient[Any], user_id: str, scooter_id: str, expected: tuple[int, int, int]
) -> None:
    offer = await new_offer(api, user_id, scooter_id)
    assert (offer["price_per_minute"], offer["price_unlock"], offer["deposit"]) == expected
    assert offer["zone_id"] == "zone-1"
    assert offer["user_id"] == user_id
    assert offer["scooter_id"] == scooter_id


async def test_user_with_current_debt_gets_no_offer(api: AsyncTestClient[Any]) -> None:
    response = await api.post("/offers", json={"user_id": "user-5", "scooter_id": "scooter-1"})
    assert response.status_code == 402
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "user_has_debt"


async def test_offer_expires_after_the_configured_ttl(api: AsyncTestClient[Any]) -> None:
    offer = await new_offer(api, "user-1", "scooter-1")
    created = datetime.fromisoformat(offer["created_at"])
    expires = datetime.fromisoformat(offer["expires_at"])
    assert (expires - created).total_seconds() == 300


# --- the full ride ----------------------------------------------------------------------------


async def test_full_ride_charges_the_formula_and_releases_the_hold(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str
) -> None:
    order = await start(api, "user-6", "scooter-3")
    assert order["status"] == "active"
    assert order["payment_status"] == "held"
    assert (order["price_per_minute"], order["price_unlock"], order["deposit"]) == (24, 45, 300)
    assert (await ledger(stubs, order["id"]))["held"] == 300

    await backdate(db, order["id"], 8)
    track = [{"t": 1.0, "lat": 55.75, "lon": 37.61}, {"t": 9.0, "lat": 55.751, "lon": 37.611}]
    response = await api.post(f"/orders/{order['id']}/finish", json={"track": track})
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "finished"
    assert done["duration_seconds"] == 8
    assert done["total_amount"] == 8 * 24 // 60 + 45 == 48
    assert done["payment_status"] == "charged"
    assert done["distance_meters"] == pytest.approx(129, abs=2)

    money = await ledger(stubs, order["id"])
    assert money["charged"] == 48
    assert money["released"] == 300 - 48

    # the row lives in today's partition, with its track
    oid = parse_order_id(order["id"])
    assert oid is not None
    row = await db.fetchrow(
        "SELECT tableoid::regclass::text AS part, json_array_length(track) AS points"
        " FROM orders WHERE id = $1 AND created_at = $2",
        oid,
        created_at_of(oid),
    )
    assert row is not None
    assert row["part"] == "orders_p" + datetime.now(UTC).strftime("%Y_%m_%d")
    assert row["points"] == 2
    summary = await db.fetchrow("SELECT * FROM user_summary WHERE user_id = 'user-6'")
    assert summary is not None
    assert (summary["rides_count"], summary["total_charged"], summary["active_rides"]) == (1, 48, 0)
    events = await db.fetch(
        "SELECT event_type, order_version FROM outbox WHERE order_id = $1 ORDER BY id", oid
    )
    assert [e["event_type"] for e in events] == [
        "order_started",
        "order_finished",
        "payment_settled",
    ]
    assert [e["order_version"] for e in events] == sorted(e["order_version"] for e in events)


async def test_ride_under_free_threshold_is_cancelled_and_costs_nothing(
    api: AsyncTestClient[Any], stubs: str, ids: Ids
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    response = await api.post(f"/orders/{order['id']}/finish", json={})
    done = response.json()
    assert done["status"] == "cancelled"
    assert done["total_amount"] == 0
    assert done["payment_status"] == "released"
    money = await ledger(stubs, order["id"])
    assert money["charged"] == 0
    assert money["released"] == money["held"] == order["deposit"]


async def test_scooter_is_free_again_after_the_ride(api: AsyncTestClient[Any], ids: Ids) -> None:
    scooter = ids.scooter()
    first = await start(api, ids.rider(), scooter)
    await api.post(f"/orders/{first['id']}/finish", json={})
    second = await start(api, ids.rider(), scooter)
    assert second["status"] == "active"


async def test_rider_has_at_most_one_active_ride(api: AsyncTestClient[Any], ids: Ids) -> None:
    rider = ids.rider()
    await start(api, rider, ids.scooter())
    offer = await new_offer(api, rider, ids.scooter())
    response = await api.post("/orders", json={"offer_token": offer["token"]})
    assert response.status_code == 409
    assert response.json()["code"] == "too_many_active_rides"


# --- concurrency ------------------------------------------------------------------------------


async def test_twenty_concurrent_finishes_charge_once(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    await backdate(db, order["id"], 120)
    responses = await asyncio.gather(
        *(api.post(f"/orders/{order['id']}/finish", json={}) for _ in range(20))
    )
    assert {r.status_code for r in responses} == {200}
    bodies = [r.json() for r in responses]
    assert len({(b["finished_at"], b["total_amount"], b["status"]) for b in bodies}) == 1
    expected = 120 * order["price_per_minute"] // 60 + order["price_unlock"]
    assert bodies[0]["total_amount"] == expected
    money = await ledger(stubs, order["id"])
    assert money["charged"] == expected
    assert [e["kind"] for e in money["entries"]].count("charge") == 1


async def test_twenty_concurrent_orders_from_one_offer_start_one_ride(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids
) -> None:
    offer = await new_offer(api, ids.rider(), ids.scooter())
    responses = await asyncio.gather(
        *(api.post("/orders", json={"offer_token": offer["token"]}) for _ in range(20))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 19
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"offer_already_used"}
    stored = await db.fetchval("SELECT count(*) FROM orders WHERE offer_id = $1::uuid", offer["id"])
    assert stored == 1


async def test_two_riders_on_one_scooter_make_one_ride(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids
) -> None:
    scooter = ids.scooter()
    offers = [await new_offer(api, ids.rider(), scooter) for _ in range(2)]
    responses = await asyncio.gather(
        *(api.post("/orders", json={"offer_token": o["token"]}) for o in offers)
    )
    assert sorted(r.status_code for r in responses) == [201, 409]
    loser = next(r for r in responses if r.status_code == 409)
    assert loser.json()["code"] == "scooter_busy"
    active = await db.fetch("SELECT order_id FROM active_rides WHERE scooter_id = $1", scooter)
    assert len(active) == 1
    # the loser never reached payments: no hold without an order
    statuses = await db.fetch(
        "SELECT status FROM orders"
        " WHERE scooter_id = $1 AND created_at > now() - interval '1 hour'",
        scooter,
    )
    assert [s["status"] for s in statuses] == ["active"]


# --- idempotency keys -------------------------------------------------------------------------


async def test_replayed_idempotency_key_returns_the_first_response(
    api: AsyncTestClient[Any], ids: Ids
) -> None:
    offer = await new_offer(api, ids.rider(), ids.scooter())
    body = {"offer_token": offer["token"]}
    headers = {"Idempotency-Key": "start-1"}
    first = await api.post("/orders", json=body, headers=headers)
    again = await api.post("/orders", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()


async def test_idempotency_key_with_another_body_is_refused(
    api: AsyncTestClient[Any], ids: Ids
) -> None:
    rider = ids.rider()
    first_offer = await new_offer(api, rider, ids.scooter())
    other_offer = await new_offer(api, rider, ids.scooter())
    headers = {"Idempotency-Key": "start-2"}
    first = await api.post("/orders", json={"offer_token": first_offer["token"]}, headers=headers)
    assert first.status_code == 201
    other = await api.post("/orders", json={"offer_token": other_offer["token"]}, headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


# --- offer tokens -----------------------------------------------------------------------------


async def test_expired_offer_is_refused(
    base_settings: Settings, database: str, stubs: str, ids: Ids
) -> None:
    settings = base_settings.replace(offers={"ttl_seconds": 1})
    async with command_client(settings) as api:
        offer = await new_offer(api, ids.rider(), ids.scooter())
        await asyncio.sleep(1.1)
        response = await api.post("/orders", json={"offer_token": offer["token"]})
    assert response.status_code == 410
    assert response.json()["code"] == "offer_expired"


@pytest.mark.parametrize("where", ["payload", "signature", "key_id", "truncated"])
async def test_tampered_offer_is_refused(api: AsyncTestClient[Any], ids: Ids, where: str) -> None:
    offer = await new_offer(api, ids.rider(), ids.scooter())
    version, kid, sealed = offer["token"].split(".")

    def flip(text: str, at: int) -> str:
        return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]

    token = {
        "payload": f"{version}.{kid}.{flip(sealed, len(sealed) // 2)}",
        "signature": f"{version}.{kid}.{flip(sealed, len(sealed) - 3)}",  # the GCM tag
        "key_id": f"{version}.{flip(kid, len(kid) // 2)}.{sealed}",
        "truncated": f"{version}.{kid}.{sealed[:-22]}",
    }[where]
    response = await api.post("/orders", json={"offer_token": token})
    assert response.status_code == 422
    assert response.json()["code"] == "offer_invalid"


async def test_offer_signed_with_another_key_is_refused(
    base_settings: Settings, database: str, stubs: str, ids: Ids, api: AsyncTestClient[Any]
) -> None:
    other = base_settings.replace(offers={"keys": encode_offer_key(new_offer_key())})
    async with command_client(other) as foreign:
        offer = await new_offer(foreign, ids.rider(), ids.scooter())
    response = await api.post("/orders", json={"offer_token": offer["token"]})
    assert response.status_code == 422
    assert response.json()["code"] == "offer_invalid"


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/offers", {"user_id": 5, "scooter_id": "scooter-1"}),
        ("/offers", {"user_id": "user-1"}),
        ("/offers", {"user_id": "", "scooter_id": "scooter-1"}),
        ("/offers", {"user_id": "user-1", "scooter_id": "x" * 500}),
        ("/offers", ["user-1", "scooter-1"]),
        ("/orders", {"offer_token": 1}),
        ("/orders", {}),
        ("/orders", {"offer_token": ""}),
        ("/orders", {"offer_token": "nonsense"}),
        ("/orders", {"offer_token": "v1.a.b.c"}),
    ],
)
async def test_bad_bodies_get_problem_details(
    api: AsyncTestClient[Any], path: str, body: Any
) -> None:
    response = await api.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"]


async def test_malformed_json_is_a_400(api: AsyncTestClient[Any]) -> None:
    response = await api.post(
        "/offers", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_unknown_ids_are_404(api: AsyncTestClient[Any]) -> None:
    scooter = await api.post("/offers", json={"user_id": "user-1", "scooter_id": "scooter-0"})
    assert scooter.status_code == 404
    assert scooter.json()["code"] == "scooter_not_found"
    user = await api.post("/offers", json={"user_id": "user-999999", "scooter_id": "scooter-1"})
    assert user.status_code == 404
    assert user.json()["code"] == "user_not_found"
    for order_id in (
        "not-a-uuid",
        "00000000-0000-4000-8000-000000000000",
        "01a21689-915e-76e0-87c3-e8d8feeda668",
    ):
        response = await api.post(f"/orders/{order_id}/finish", json={})
        assert response.status_code == 404
        assert response.json()["code"] == "order_not_found"


async def test_bad_tracks_are_refused(api: AsyncTestClient[Any], ids: Ids) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    url = f"/orders/{order['id']}/finish"
    huge = [{"t": float(i), "lat": 55.0, "lon": 37.0} for i in range(2_001)]
    response = await api.post(url, json={"track": huge})
    assert response.status_code == 413
    assert response.json()["code"] == "track_too_long"
    for track in (
        [{"t": 1, "lat": 91, "lon": 0}],
        [{"t": 1, "lat": "north", "lon": 0}],
        "not a list",
        [{"t": 1}],
    ):
        response = await api.post(url, json={"track": track})
        assert response.status_code == 400, track
    # the refused finishes did not end the ride
    done = await api.post(url, json={"track": [{"t": 1.0, "lat": 55.0, "lon": 37.0}]})
    assert done.json()["status"] in {"finished", "cancelled"}


async def test_invalid_idempotency_key_is_a_400(api: AsyncTestClient[Any], ids: Ids) -> None:
    offer = await new_offer(api, ids.rider(), ids.scooter())
    response = await api.post(
        "/orders", json={"offer_token": offer["token"]}, headers={"Idempotency-Key": "x" * 300}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_idempotency_key"


async def test_idempotency_key_in_flight_is_a_409(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids
) -> None:
    offer = await new_offer(api, ids.rider(), ids.scooter())
    body = {"offer_token": offer["token"]}
    # the first request with this key is still running (claimed, no result yet)
    raw = json.dumps(body, separators=(",", ":")).encode()
    await db.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)",
        f"start:{offer['user_id']}",
        "in-flight-1",
        hashlib.sha256(raw).digest(),
    )
    response = await api.post(
        "/orders",
        content=raw,
        headers={"Idempotency-Key": "in-flight-1", "content-type": "application/json"},
    )
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_flight"
