"""Issue 8's table, the rows about input: each input that once got a 500 (or an unclear
answer) now gets the right one, on the command API and the stubs."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from shared.ride_rules import capped_cost
from shared.settings import Settings
from tests.auth import SUPPORT, Tokens
from tests.conftest import ADMIN
from tests.e2e.conftest import (
    Ids,
    backdate,
    command_client,
    ledger,
    new_offer,
    order_row,
    start,
)

JSON = {"content-type": "application/json"}
NOT_UTF8 = b'{"user_id":"user-\xff","scooter_id":"scooter-1"}'
DEEP = b'{"user_id":' + b"[" * 1000 + b"]" * 1000 + b"}"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    return body


def antipodes(points: int, seconds_apart: float) -> list[dict[str, float]]:
    """The issue's track: alternating (0, 0) and (0, 180), half the Earth per segment."""
    return [
        {"t": i * seconds_apart, "lat": 0, "lon": 0 if i % 2 == 0 else 180} for i in range(points)
    ]


# --- integer overflow of derived or external numbers -------------------------------------------


async def test_109_point_antipodal_track_finishes_and_counts_no_impossible_speed(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    await backdate(db, order["id"], 60)
    url = f"/orders/{order['id']}/finish"
    track = antipodes(109, 1)  # 20,000 km a second: every segment is a GPS glitch

    response = await api.post(url, json={"track": track})

    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "finished"
    assert done["distance_meters"] == 0
    assert done["payment_status"] == "charged"
    assert (await ledger(stubs, order["id"]))["charged"] == done["total_amount"]
    again = await api.post(url, json={"track": track})  # a retry answers the same ride
    assert again.status_code == 200
    assert again.json()["total_amount"] == done["total_amount"]


async def test_track_longer_than_32_bits_of_metres_is_stored(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids
) -> None:
    """109 antipodal points at 72 km/h: 2.16e9 m, past a 32-bit column."""
    order = await start(api, ids.rider(), ids.scooter())
    await backdate(db, order["id"], 60)

    response = await api.post(
        f"/orders/{order['id']}/finish", json={"track": antipodes(109, 1_000_000)}
    )

    assert response.status_code == 200, response.text
    assert response.json()["distance_meters"] > 2**31
    assert (await order_row(db, order["id"]))["distance_meters"] > 2**31


async def test_a_ride_of_years_finishes_and_is_charged_for_the_cap(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids, base_settings: Settings
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    years = 3 * 365 * 86_400
    await backdate(db, order["id"], years)

    response = await api.post(f"/orders/{order['id']}/finish", json={})

    assert response.status_code == 200, response.text
    done = response.json()
    cap = base_settings.rides.max_charged_seconds
    assert done["duration_seconds"] >= years  # the real duration is recorded
    assert done["total_amount"] == capped_cost(
        cap * order["price_per_minute"] // 60 + order["price_unlock"],
        base_settings.rides.max_cost,
    )
    assert (await ledger(stubs, order["id"]))["charged"] == done["total_amount"]


def nonsense_count(service: str) -> float:
    return REGISTRY.get_sample_value("scooters_external_nonsense_total", {"service": service}) or 0


@pytest.mark.usefixtures("reset_configs")
async def test_configs_answering_nonsense_keep_the_last_good_value(
    base_settings: Settings, database: str, stubs: str
) -> None:
    settings = base_settings.replace(external={"configs_refresh_seconds": 0})
    async with command_client(settings) as api:
        good = await new_offer(api, "user-1", "scooter-1")  # zone-1: 12/min, surge 2
        before = nonsense_count("configs")
        async with httpx.AsyncClient() as client:
            changed = await client.post(
                f"{stubs}/admin/configs", json={"surge": 1e308}, headers=ADMIN
            )
            changed.raise_for_status()
        offer = await new_offer(api, "user-1", "scooter-1")

    assert good["price_per_minute"] == offer["price_per_minute"] == 24  # surge 2 kept
    assert nonsense_count("configs") == before + 1


@pytest.mark.usefixtures("reset_configs")
async def test_configs_answering_nonsense_first_use_the_defaults(
    base_settings: Settings, database: str, stubs: str
) -> None:
    settings = base_settings.replace(
        external={"configs_refresh_seconds": 0}, pricing={"surge_default": 1.5}
    )
    async with httpx.AsyncClient() as client:
        changed = await client.post(
            f"{stubs}/admin/configs", json={"low_charge_discount": 40.0}, headers=ADMIN
        )
        changed.raise_for_status()
    async with command_client(settings) as api:
        offer = await new_offer(api, "user-1", "scooter-2")  # charge 20: the discount applies

    assert offer["price_per_minute"] == 18  # int(12 x 1.5), then the default discount 1.0


# --- undecodable input --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [NOT_UTF8, DEEP], ids=["not-utf8", "deep"])
async def test_undecodable_offer_bodies_are_400(api: AsyncTestClient[Any], body: bytes) -> None:
    detail = assert_problem(
        await api.post("/offers", content=body, headers=JSON), 400, "invalid_request"
    )["detail"]
    # refused at the first byte or level that cannot be the offer's shape
    assert "UTF-8" in detail or "got `array` - at `$.user_id`" in detail


@pytest.mark.parametrize(
    "body",
    [
        b'{"offer_token":"v1.\xff"}',
        b'{"offer_token":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b"\x00\x01\x02",
        b'{"offer_token":"a\\u0000b"}',
    ],
    ids=["not-utf8", "deep", "binary", "nul"],
)
async def test_undecodable_start_bodies_are_4xx(api: AsyncTestClient[Any], body: bytes) -> None:
    response = await api.post("/orders", content=body, headers=JSON)
    assert_problem(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        b'{"track":[{"t":1,"lat":0,"lon":0,"note":"\xff"}]}',
        b'{"track":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"track":[{"t":1e999,"lat":0,"lon":0}]}',
        b'{"track":[{"t":1,"lat":0,"lon":0,"extra":1}]}',
    ],
    ids=["not-utf8", "deep", "huge-number", "unknown-field"],
)
async def test_undecodable_finish_bodies_are_400_and_leave_the_ride_active(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids, body: bytes
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    response = await api.post(f"/orders/{order['id']}/finish", content=body, headers=JSON)
    assert_problem(response, 400, "invalid_request")
    assert (await order_row(db, order["id"]))["status"] == "active"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "the request body is missing: send a JSON object"),
        (b" \r\n", "the request body is only whitespace: send a JSON object"),
        (b'"\\ud800"', "the body is not valid JSON: a \\uD800-\\uDBFF escape without"),
        (b"{", "the body is not valid JSON: the text ends before the JSON value does"),
    ],
    ids=["empty", "whitespace", "lone-surrogate", "cut-short"],
)
async def test_a_missing_or_unparsable_body_is_named_as_such_on_every_command(
    api: AsyncTestClient[Any], tokens: Tokens, ids: Ids, body: bytes, detail: str
) -> None:
    """break8 (issue 8): an empty body was "data: 'data'", a blank one or a lone surrogate
    escape "Input data was truncated"; one answer for all the commands that take a body."""
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    support = {**tokens.headers("support-1", SUPPORT), "Idempotency-Key": "k-body"}
    posts = [
        ("/offers", JSON),
        ("/orders", JSON),
        (f"/orders/{order['id']}/refunds", {**JSON, **support}),
        (f"/users/{rider}/debt/settle", {**JSON, **support}),
    ]
    if body:  # no body is a finish without a track
        posts.append((f"/orders/{order['id']}/finish", JSON))
    for path, headers in posts:
        for sent in (headers, {k: v for k, v in headers.items() if k != "content-type"}):
            response = await api.post(path, content=body, headers=sent)
            problem = assert_problem(response, 400, "invalid_request")
            assert problem["detail"].startswith(detail), (path, problem)
    await api.post(f"/orders/{order['id']}/finish", json={})


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/json; charset=utf-16",
        "application/jsonx",
    ],
)
async def test_a_body_declared_as_anything_but_json_is_415_on_every_command(
    api: AsyncTestClient[Any], ids: Ids, content_type: str
) -> None:
    """break8 (issue 8): any Content-Type was read as JSON (text/plain, a form, XML,
    charset=utf-16 all started rides); the fast path and Litestar answer alike."""
    rider, scooter = ids.rider(), ids.scooter()
    body = json.dumps({"user_id": rider, "scooter_id": scooter}).encode()
    for path in ("/offers", "/orders", "/orders/01a21689-915e-76e0-87c3-e8d8feeda668/finish"):
        response = await api.post(path, content=body, headers={"content-type": content_type})
        assert_problem(response, 415, "unsupported_media_type")
    for accepted in ("application/json; charset=UTF-8", "application/problem+json", None):
        headers = {} if accepted is None else {"content-type": accepted}
        response = await api.post("/offers", content=body, headers=headers)
        assert response.status_code == 201, (accepted, response.text)


@pytest.mark.parametrize(
    "user_id",
    ["a\x00b", "a\nb", "user-1\n", "a b", "ü", "user-1\x1b[31m", "x" * 65, "", "../../etc"],
)
async def test_ids_of_every_shape_are_400(api: AsyncTestClient[Any], user_id: str) -> None:
    for body in (
        {"user_id": user_id, "scooter_id": "scooter-1"},
        {"user_id": "user-1", "scooter_id": user_id},
    ):
        assert_problem(await api.post("/offers", json=body), 400, "invalid_request")


@pytest.mark.parametrize(
    "order_id", ["a%00b", "a%0Ab", "%FF", "x" * 300, "01a21689-915e-76e0-87c3-e8d8feeda668%00"]
)
async def test_order_ids_of_every_shape_are_404(api: AsyncTestClient[Any], order_id: str) -> None:
    response = await api.post(f"/orders/{order_id}/finish", json={})
    assert_problem(response, 404, "order_not_found")


# a UUIDv7 whose time is past 9999-12-31 has no creation time (the partition key): 500
PAST_9999 = "ffffffff-ffff-7fff-bfff-ffffffffffff"


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("finish", {}),
        ("end", {"ended_at": "2026-11-30T12:00:00Z", "reason": "app crashed"}),
        ("refunds", {"amount": 1, "reason": "brake failed"}),
    ],
)
async def test_order_ids_past_the_year_9999_are_404(
    api: AsyncTestClient[Any], tokens: Tokens, action: str, body: dict[str, Any]
) -> None:
    headers = {**tokens.headers("support-1", SUPPORT), "Idempotency-Key": "k-9999"}
    response = await api.post(f"/orders/{PAST_9999}/{action}", json=body, headers=headers)
    assert_problem(response, 404, "order_not_found")


# --- control characters in the operator's free text ---------------------------------------------


REFUSED_REASONS = [
    *["a\x00b", "a\nforged", "ok\n", "\tok", "a\x1b[31m", "a\x85b"],  # controls
    *["a\u2028b", "paid \u202ednuof"],  # a line separator, a right-to-left override
    *["\u200b", "\ufeff\u3164 \u200d"],  # nothing visible
]


@pytest.mark.parametrize("reason", REFUSED_REASONS)
async def test_operator_reasons_refused_by_their_characters_are_400_and_change_nothing(
    api: AsyncTestClient[Any], db: asyncpg.Pool, stubs: str, ids: Ids, tokens: Tokens, reason: str
) -> None:
    """A reason is stored with the act (``order_actions``): NUL there was Postgres's
    CharacterNotInRepertoireError, a 500 (for settle, after payments had charged)."""
    rider = ids.rider()
    order = await start(api, rider, ids.scooter())
    support = tokens.headers("support-1", SUPPORT)
    ended_at = (await order_row(db, order["id"]))["started_at"].isoformat()
    requests = [
        (f"/orders/{order['id']}/end", {"ended_at": ended_at, "reason": reason}),
        (f"/orders/{order['id']}/refunds", {"amount": 1, "reason": reason}),
        (f"/users/{rider}/debt/settle", {"reason": reason}),
    ]
    for path, body in requests:
        response = await api.post(path, json=body, headers={**support, "Idempotency-Key": "k-r"})
        assert_problem(response, 400, "invalid_request")
    row = await order_row(db, order["id"])
    assert row["status"] == "active"
    acts = await db.fetchval("SELECT count(*) FROM order_actions WHERE order_id = $1", row["id"])
    assert acts == 0
    assert [e["kind"] for e in (await ledger(stubs, order["id"]))["entries"]] == ["hold"]


# --- unclear error ------------------------------------------------------------------------------


async def test_finish_without_a_body_ends_the_ride_with_no_track(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids
) -> None:
    order = await start(api, ids.rider(), ids.scooter())
    await backdate(db, order["id"], 30)

    response = await api.post(f"/orders/{order['id']}/finish")

    assert response.status_code == 200, response.text
    done = response.json()
    assert done["status"] == "finished"
    assert done["distance_meters"] == 0
    row = await order_row(db, order["id"])
    assert row["track"] is None


# --- request ids -------------------------------------------------------------------------------


async def test_request_id_is_echoed_or_made(api: AsyncTestClient[Any]) -> None:
    given = await api.get("/health/live", headers={"X-Request-ID": "req-42.a:b"})
    assert given.headers["x-request-id"] == "req-42.a:b"
    for unsafe in ("x" * 200, "a b", "é"):
        made = await api.get("/health/live", headers=[(b"X-Request-ID", unsafe.encode())])
        assert made.headers["x-request-id"] != unsafe
        assert len(made.headers["x-request-id"]) == 16
    assert len((await api.get("/health/live")).headers["x-request-id"]) == 16


# --- the stubs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/hold-money-for-order", b'{"user_id":"user-\xff","order_id":"o","amount":1}'),
        ("/clear-money-for-order", b'{"user_id":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("/hold-money-for-order", b'{"user_id":"u","order_id":"o","amount":99999999999999999999}'),
        ("/hold-money-for-order", b""),
        ("/admin/faults", b'{"service":"\xfe"}'),
        ("/admin/configs", b"[" * 5000),
    ],
)
async def test_stubs_answer_undecodable_bodies_with_400(stubs: str, path: str, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=stubs) as client:
        # the admin routes need the stubs' admin token first; the others ignore it
        response = await client.post(path, content=body, headers={**JSON, **ADMIN})
    assert_problem(response, 400, "malformed_body")


async def test_the_identity_stub_issues_no_sub_with_a_line_break(stubs: str) -> None:
    """Python's "$" also matches before a final line break: "user-1\\n" passed the
    stub's pattern and was signed into a token's sub."""
    async with httpx.AsyncClient(base_url=stubs) as client:
        for sub in ("user-1\n", "a\nb", "a\x00b"):
            response = await client.post("/auth/token", json={"sub": sub})
            assert_problem(response, 400, "malformed_body")


async def test_stubs_answer_ids_of_every_shape_without_a_500(stubs: str) -> None:
    """A lookup's id with a control character is refused 400 ``invalid_request`` like the
    APIs refuse it (it was a 404 before: no record has such an id, but it is no id);
    printable text that names no record stays a 404."""
    async with httpx.AsyncClient(base_url=stubs) as client:
        for path in ("/user-profile", "/scooter-data", "/tariff-zone-data"):
            for raw in ("a%00b", "a%0Ab", "user-1%0A", "%0D", "a%09b", "%1B[31m", "a%7F", "%C2%85"):
                response = await client.get(f"{path}?id={raw}")
                assert_problem(response, 400, "invalid_request")
            for raw in ("%FF", "a%20b", "%E2%82%AC", "nobody"):
                response = await client.get(f"{path}?id={raw}")
                assert response.status_code == 404, (path, raw, response.text)
            assert_problem(await client.get(path, params={"id": "x" * 300}), 400, "invalid_request")
        assert (await client.get("/user-profile", params={"id": "user-1"})).status_code == 200


# --- the class, not the examples: any bytes as a body are a 4xx on every command ---------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
    path=st.sampled_from(
        ["/offers", "/orders", "/orders/01a21689-915e-76e0-87c3-e8d8feeda668/finish"]
    ),
)
async def test_any_body_on_any_command_is_a_4xx_problem(
    api: AsyncTestClient[Any], body: bytes, path: str
) -> None:
    response = await api.post(path, content=body, headers=JSON)
    assert 400 <= response.status_code < 500, (body, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
