"""ADR 0012: the ride commands' fast path answers exactly what Litestar answers.

Each request goes to the command API with the fast path (the ``api`` fixture, the
default) and to one made with ``SCOOTERS_COMMAND_FAST_PATH=false`` (every request
through Litestar); the two answers must have the same status, headers and body (ids
and times aside for the rides both start).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

import command_api.app as command_app
from shared.settings import Settings
from tests.auth import Tokens
from tests.e2e.conftest import Ids, command_client

JSON = {"content-type": "application/json"}
UNKNOWN_ORDER = "01900000-0000-7000-8000-000000000000"


@pytest.fixture(scope="module")
async def litestar_only(base_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with command_client(
        base_settings.replace(serving={"command_fast_path": False})
    ) as client:
        yield client


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}


async def _both(
    fast: AsyncTestClient[Any],
    slow: AsyncTestClient[Any],
    path: str,
    content: bytes,
    headers: dict[str, str],
) -> tuple[httpx.Response, httpx.Response]:
    a = await fast.post(path, content=content, headers=headers)
    b = await slow.post(path, content=content, headers=headers)
    return a, b


def _count(route: str, status: str) -> float:
    labels = {"app": "command_api", "method": "POST", "route": route, "status": status}
    return REGISTRY.get_sample_value("http_request_duration_seconds_count", labels) or 0.0


async def test_refusals_are_the_same_bytes_as_litestars(
    api: AsyncTestClient[Any],
    litestar_only: AsyncTestClient[Any],
    ids: Ids,
    tokens: Tokens,
) -> None:
    rider = ids.rider()
    auth = {**JSON, "authorization": f"Bearer {await tokens.aget(rider, ['rider'])}"}
    support = {**JSON, "authorization": f"Bearer {await tokens.aget('ops-1', ['support'])}"}
    scooter = ids.scooter()
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/offers", b'{"scooter_id":"x"}', {**JSON, "authorization": "Basic abc"}),
        ("/offers", b'{"scooter_id":"x"}', {**JSON, "authorization": "Bearer not.a.jwt"}),
        ("/offers", b"{", auth),
        ("/offers", b"", auth),
        ("/offers", b'{"scooter_id":"scooter-\xff"}', auth),
        ("/offers", b'{"scooter_id":"s","extra":1}', auth),
        ("/offers", b'{"scooter_id":"s\\n"}', auth),
        ("/offers", b'{"scooter_id":"%s","user_id":"someone-else"}' % scooter.encode(), auth),
        ("/offers", b'{"scooter_id":"no-such-scooter"}', auth),
        ("/offers", b'{"scooter_id":"%s"}' % scooter.encode(), support),
        ("/orders", b'{"offer_token":"v2.abc.def"}', auth),
        ("/orders", b'{"offer_token":""}', auth),
        ("/orders", b'{"offer_token":' + b"[" * 200 + b"]" * 200 + b"}", auth),
        ("/orders", b'{"offer_token":"v2.abc.def"}', support),
        ("/orders/nope/finish", b"", auth),
        (f"/orders/{UNKNOWN_ORDER}/finish", b"", auth),
        (f"/orders/{UNKNOWN_ORDER}/finish", b'{"track":[{"t":0}]}', auth),
        (f"/orders/{UNKNOWN_ORDER}/finish", b"{", auth),
        (f"/orders/{UNKNOWN_ORDER}/finish", b"null", {**auth, "idempotency-key": ""}),
    ]
    for path, content, headers in cases:
        fast, slow = await _both(api, litestar_only, path, content, headers)
        assert (fast.status_code, _headers(fast), fast.content) == (
            slow.status_code,
            _headers(slow),
            slow.content,
        ), (path, content)
        assert fast.status_code >= 400
        assert fast.headers["x-request-id"]


async def test_a_ride_answers_the_same_shape(
    api: AsyncTestClient[Any], litestar_only: AsyncTestClient[Any], ids: Ids
) -> None:
    answers: list[list[httpx.Response]] = []
    finish_route = "/orders/{order_id}/finish"
    before = _count(finish_route, "200")
    for client in (api, litestar_only):
        rider, scooter = ids.rider(), ids.scooter()
        offer = await client.post("/offers", json={"user_id": rider, "scooter_id": scooter})
        started = await client.post("/orders", json={"offer_token": offer.json()["token"]})
        order_id = started.json()["id"]
        track = {
            "track": [{"t": 0, "lat": 55.75, "lon": 37.61}, {"t": 5, "lat": 55.7501, "lon": 37.61}]
        }
        finished = await client.post(f"/orders/{order_id}/finish", json=track)
        again = await client.post(f"/orders/{order_id}/finish", json=track)
        answers.append([offer, started, finished, again])
    assert _count(finish_route, "200") == before + 4  # both paths record the same route
    for fast, slow in zip(*answers, strict=True):
        # the riders' and scooters' ids differ in length, so the bodies' lengths may too
        assert fast.status_code == slow.status_code
        assert _headers(fast).keys() == _headers(slow).keys()
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.status_code in (200, 201), fast.text
        a, b = fast.json(), slow.json()
        assert a.keys() == b.keys()
        for key in a:  # prices and ids differ with the scooter and rider
            assert type(a[key]) is type(b[key]), key
        for key in a.keys() & {"status", "payment_status"}:
            assert a[key] == b[key], key
    finished = answers[0][2].json()
    assert finished["status"] in ("finished", "cancelled")
    assert answers[0][3].content == answers[0][2].content  # a retry answers the same ride


async def test_cors_chunked_and_oversized_requests_go_to_litestar(
    api: AsyncTestClient[Any], litestar_only: AsyncTestClient[Any], ids: Ids, tokens: Tokens
) -> None:
    auth = {**JSON, "authorization": f"Bearer {await tokens.aget(ids.rider(), ['rider'])}"}
    body = b'{"scooter_id":"no-such-scooter"}'
    fast, slow = await _both(api, litestar_only, "/offers", body, {**auth, "origin": "https://x"})
    assert (fast.status_code, _headers(fast), fast.content) == (
        slow.status_code,
        _headers(slow),
        slow.content,
    )
    huge = b'{"track":[' + b" " * (3 * 1024 * 1024) + b"]}"
    fast, slow = await _both(api, litestar_only, f"/orders/{UNKNOWN_ORDER}/finish", huge, auth)
    assert fast.status_code == slow.status_code == 413
    assert fast.content == slow.content


async def test_plain_requests_never_reach_litestars_handlers(
    api: AsyncTestClient[Any], ids: Ids, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Litestar handlers are the only callers of principal_of: broken, they answer
    500, while the fast path still answers; a CORS request still goes to them."""

    def broken(user: Any) -> Any:
        raise RuntimeError("a Litestar handler was called")

    monkeypatch.setattr(command_app, "principal_of", broken)
    auth = {**JSON, "authorization": f"Bearer {await tokens.aget(ids.rider(), ['rider'])}"}
    body = b'{"scooter_id":"no-such-scooter"}'

    plain = await api.post("/offers", content=body, headers=auth)
    cors = await api.post("/offers", content=body, headers={**auth, "origin": "https://x"})

    assert plain.status_code == 404, plain.text  # scooter_not_found, from the fast path
    assert cors.status_code == 500, cors.text
