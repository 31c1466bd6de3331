"""The ride screen's lane (ADR 0011): which requests it answers, and its error answers.

The lane over a stand-in for Litestar's handler, with a stand-in ``Reads`` and token
verifier; the real app's answers through the lane are in
tests/integration/test_query_api.py ("the ride screen's lane").
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar import Litestar

from query_api.screen_lane import plain_page_query, screen_lane
from shared.errors import DependencyUnavailable, Unauthenticated
from shared.infra.auth import Principal
from shared.infra.di import Slot

ORDER = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


class FakeVerifier:
    async def verify(self, token: str) -> Principal:
        if token != "good":
            raise Unauthenticated("bad token")
        return Principal("rider-1", frozenset({"rider"}))


class FakeReads:
    max_charged_seconds = None
    max_cost = 0

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.asked: list[str] = []

    async def user_orders(self, user_id: str, limit: int, after: Any) -> Any:
        self.asked.append(f"{user_id} {limit} {after}")
        if self.error is not None:
            raise self.error
        return type("Page", (), {"items": [], "next_entry": None})()

    async def order(self, order_id: Any) -> None:
        self.asked.append(str(order_id))
        if self.error is not None:
            raise self.error
        return None  # no such order


async def call(
    reads: FakeReads, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], bytes, bool]:
    path, _, query = path.partition("?")
    """(status, headers, body, whether Litestar's handler got the request)."""
    passed = False

    async def litestar(scope: Any, receive: Any, send: Any) -> None:
        nonlocal passed
        passed = True
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    reads_slot: Slot[Any] = Slot("reads")
    reads_slot.fill(reads)
    verifier: Slot[Any] = Slot("verifier")
    verifier.fill(FakeVerifier())
    lane: Any = screen_lane(litestar, reads_slot, verifier)  # called with plain dicts
    app = Litestar([])
    app.state.retry_after_seconds = 7
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers,
        "app": app,
        "litestar_app": app,
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await lane(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, passed


SIGNED_IN = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer good")]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", f"/orders/{ORDER}/receipt", SIGNED_IN),
        ("GET", f"/orders/{ORDER}/", SIGNED_IN),  # Litestar's spelling of the same route
        ("GET", "/orders/", SIGNED_IN),
        ("GET", "/orders", SIGNED_IN),
        ("HEAD", f"/orders/{ORDER}", SIGNED_IN),
        ("POST", f"/orders/{ORDER}", SIGNED_IN),
        ("GET", "/users/rider-1/orders?limit=0", SIGNED_IN),  # Litestar: 422
        ("GET", "/users/rider-1/orders?limit=20&page=2", SIGNED_IN),
        ("GET", "/users/rider-1/orders/", SIGNED_IN),
        ("GET", "/users/rider 1/orders", SIGNED_IN),  # Litestar: 422
        ("GET", "/users/rider-1/summary", SIGNED_IN),
        ("GET", f"/orders/{ORDER}", [(b"host", b"bad host"), SIGNED_IN[1]]),  # Litestar: 400
    ],
)
async def test_other_requests_go_to_litestar(
    method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    reads = FakeReads()
    status, _, _, passed = await call(reads, method, path, headers)
    assert (status, passed, reads.asked) == (299, True, [])


async def test_the_screen_is_answered_in_the_lane() -> None:
    reads = FakeReads()  # no such order: 404, from the lane
    status, headers, body, passed = await call(reads, "GET", f"/orders/{ORDER}", SIGNED_IN)
    assert (status, passed, reads.asked) == (404, False, [ORDER])
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(body)["code"] == "order_not_found"


async def test_not_an_order_id_is_not_found_without_a_read() -> None:
    reads = FakeReads()
    status, _, body, passed = await call(reads, "GET", "/orders/not-an-id", SIGNED_IN)
    assert (status, passed, reads.asked, json.loads(body)["code"]) == (
        404,
        False,
        [],
        "order_not_found",
    )


@pytest.mark.parametrize(
    "headers", [[(b"host", b"127.0.0.1")], [(b"authorization", b"Bearer forged")]]
)
async def test_sign_in_is_required(headers: list[tuple[bytes, bytes]]) -> None:
    reads = FakeReads()
    status, answer, body, passed = await call(reads, "GET", f"/orders/{ORDER}", headers)
    assert (status, passed, reads.asked) == (401, False, [])
    assert answer[b"www-authenticate"] == b"Bearer"
    assert json.loads(body)["code"] == "unauthenticated"


async def test_no_store_answering_is_503_with_retry_after() -> None:
    reads = FakeReads(DependencyUnavailable("postgres"))
    status, headers, body, _ = await call(reads, "GET", f"/orders/{ORDER}", SIGNED_IN)
    assert (status, headers[b"retry-after"]) == (503, b"7")
    assert json.loads(body)["code"] == DependencyUnavailable.code


async def test_a_bug_is_a_bare_500_problem() -> None:
    reads = FakeReads(KeyError("oops"))
    status, headers, body, _ = await call(reads, "GET", f"/orders/{ORDER}", SIGNED_IN)
    assert status == 500
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(body)["code"] == "internal_error"
    assert b"oops" not in body


@pytest.mark.parametrize(
    ("headers", "reads"),
    [
        (SIGNED_IN, FakeReads()),  # 404 from the screen
        ([(b"host", b"127.0.0.1")], FakeReads()),  # 401 from sign-in
        (SIGNED_IN, FakeReads(KeyError("oops"))),  # 500
    ],
)
async def test_every_answer_of_the_lane_has_the_request_id(
    headers: list[tuple[bytes, bytes]], reads: FakeReads
) -> None:
    """The lane gives request ids itself (ADR 0028): the caller's when safe, else a new one."""
    _, given, _, _ = await call(
        reads, "GET", f"/orders/{ORDER}", [*headers, (b"x-request-id", b"r-1")]
    )
    assert given[b"x-request-id"] == b"r-1"
    _, fresh, _, _ = await call(
        reads, "GET", f"/orders/{ORDER}", [*headers, (b"x-request-id", b"bad id")]
    )
    assert fresh[b"x-request-id"] not in (b"", b"bad id")


async def test_the_lane_records_the_status_under_the_route_template() -> None:
    from prometheus_client import REGISTRY

    labels = {"app": "query_api", "method": "GET", "route": "/orders/{order_id}"}

    def count(status: str) -> float:
        value = REGISTRY.get_sample_value(
            "http_request_duration_seconds_count", {**labels, "status": status}
        )
        return value or 0.0

    before = (count("404"), count("401"))
    await call(FakeReads(), "GET", f"/orders/{ORDER}", SIGNED_IN)
    await call(FakeReads(), "GET", f"/orders/{ORDER}", [(b"host", b"127.0.0.1")])
    assert (count("404"), count("401")) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(
    ("query", "plain"),
    [
        (b"", (20, None)),
        (b"limit=1", (1, None)),
        (b"limit=100&cursor=abc", (100, "abc")),
        (b"cursor=abc", (20, "abc")),
        (b"limit=0", None),
        (b"limit=101", None),
        (b"limit=020", None),
        (b"limit=1000", None),
        (b"limit=-1", None),
        (b"limit=", None),
        (b"limit", None),
        (b"limit=2&limit=3", None),
        (b"cursor=", None),
        (b"cursor=a%2Fb", None),
        (b"cursor=a+b", None),
        (b"cursor=" + b"a" * 201, None),
        ("cursor=é".encode(), None),
        (b"page=2", None),
        (b"limit=5&", None),
    ],
)
def test_only_plain_history_queries_are_taken(query: bytes, plain: Any) -> None:
    """Anything but a plain ``limit``/``cursor`` goes to Litestar, which answers it (422
    when out of bounds), so the lane never answers what Litestar would refuse."""
    assert plain_page_query(query) == plain


async def test_a_history_page_is_answered_in_the_lane() -> None:
    reads = FakeReads()
    status, headers, body, passed = await call(
        reads, "GET", "/users/rider-1/orders?limit=5", SIGNED_IN
    )
    assert (status, passed, reads.asked) == (200, False, ["rider-1 5 None"])
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"items": [], "next_cursor": None}


async def test_another_riders_history_is_forbidden_in_the_lane() -> None:
    reads = FakeReads()
    status, headers, body, passed = await call(reads, "GET", "/users/rider-2/orders", SIGNED_IN)
    assert (status, passed, reads.asked) == (403, False, [])
    assert json.loads(body)["code"] == "forbidden"
    assert b"x-request-id" in headers


async def test_a_foreign_cursor_is_invalid_in_the_lane() -> None:
    reads = FakeReads()
    status, _, body, passed = await call(
        reads, "GET", "/users/rider-1/orders?cursor=bm90LWEtY3Vyc29y", SIGNED_IN
    )
    assert (status, passed, json.loads(body)["code"]) == (422, False, "invalid_parameter")
