"""Issue 8's input rows on the query API: ids of every shape never reach Postgres or Redis,
and the answer to a bad parameter is the same problem as on the command API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from query_api.app import create_app
from query_api.screens import encode_cursor
from shared.settings import Settings
from tests.auth import acting_rider, tokens_for

Client = AsyncTestClient[Any]


@pytest.fixture(scope="module")
async def client(settings: Settings, stubs: str) -> AsyncIterator[Client]:
    # each request carries a token from the identity stub (tests/auth.py): of the user it
    # reads, or support's for an order
    test_client: Client = AsyncTestClient(app=create_app(settings))
    acting_rider(test_client, tokens_for(settings))
    async with test_client:
        yield test_client


@pytest.mark.parametrize(
    "user_id",
    [
        "a%00b",
        "a%0Ab",
        "user-1%0A",
        "a%0D%0Aforged",
        "%FF",
        "a%20b",
        "%C3%BC",
        "a%1B%5B31m",
        "x" * 65,
    ],
)
@pytest.mark.parametrize("view", ["summary", "orders"])
async def test_user_ids_of_every_shape_are_422(client: Client, user_id: str, view: str) -> None:
    response = await client.get(f"/users/{user_id}/{view}")
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_parameter"


@pytest.mark.parametrize("order_id", ["a%00b", "a%0Ab", "%FF", "x" * 500, "%00" * 40])
async def test_order_ids_of_every_shape_are_404(client: Client, order_id: str) -> None:
    response = await client.get(f"/orders/{order_id}")
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "order_not_found"


# a UUIDv7 whose 48-bit time is past 9999-12-31: its creation time (the partition key of
# every lookup) is no datetime, and the lookups raised ValueError, a 500 (issue 8)
PAST_9999 = ["ffffffff-ffff-7fff-bfff-ffffffffffff", "e677d21f-dc00-7000-8000-000000000000"]


@pytest.mark.parametrize("order_id", PAST_9999)
@pytest.mark.parametrize("view", ["", "/receipt", "/track"])
async def test_order_ids_past_the_year_9999_are_404(
    client: Client, order_id: str, view: str
) -> None:
    response = await client.get(f"/orders/{order_id}{view}")
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "order_not_found"


FAR_FUTURE = encode_cursor(10**20, "01a21689-915e-76e0-87c3-e8d8feeda668")


@pytest.mark.parametrize(
    "query",
    [
        "limit=%00",
        "limit=1e999",
        "limit=99999999999999999999999",
        "cursor=%00",
        "cursor=%FF%FE",
        "cursor=" + "A" * 201,
        f"cursor={FAR_FUTURE}",
    ],
)
async def test_query_parameters_of_every_shape_are_422(client: Client, query: str) -> None:
    response = await client.get(f"/users/user-1/orders?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_parameter"


async def test_health_wording_is_the_command_apis(client: Client) -> None:
    live = await client.get("/health/live")
    assert live.json() == {"status": "ok"}
    ready = (await client.get("/health/ready")).json()
    assert ready["status"] in {"ok", "degraded", "down"}
    assert {ready["postgres"], ready["redis"]} <= {"up", "down"}
