"""HAProxy with deploy/haproxy.cfg in front of a real query API process (ADR 0024): with
one request at a time let through, a flood is answered 200 or refused by HAProxy with
the API's own 503 ``overloaded`` problem, ``Retry-After`` and the request's id; never
another 5xx; the API sheds none of it itself; the next request is served.

Skipped only where haproxy is not installed (a deployment artifact, not part of the
project's set-up); the measured numbers are in docs/benchmarks.md ("i8front").
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from shared.infra.admission import overloaded_body
from shared.settings import Settings
from tests.auth import Tokens
from tests.e2e.conftest import Ids
from tests.e2e.test_overload import Process, _burst, api_process, scrape
from tests.front import HAPROXY, MISSING, Front, running_haproxy
from tests.ports import free_port

pytestmark = pytest.mark.skipif(HAPROXY is None, reason=MISSING)

MAXCONN = 1  # requests HAProxy lets through to the API at once
ID = re.compile(rb"\r\nx-request-id: ([A-Za-z0-9._:-]{1,128})\r\n", re.IGNORECASE)


@pytest.fixture
def query_api(base_settings: Settings, database: str, stubs: str) -> Iterator[Process]:
    """The query API with its default admission (128 in flight): the second line."""
    with api_process("query_api", base_settings) as api:
        yield api


@pytest.fixture
def front(query_api: Process, base_settings: Settings) -> Iterator[Front]:
    """HAProxy in front of ``query_api`` (and of no command API); yields its addresses."""
    config = Front(
        query_front=f"127.0.0.1:{free_port()}",
        query_api=f"127.0.0.1:{query_api.port}",
        query_maxconn=MAXCONN,
        command_front=f"127.0.0.1:{free_port()}",
        command_api="127.0.0.1:1",  # no command API here: its backend is just down
        command_maxconn=MAXCONN,
        retry_after=base_settings.serving.retry_after_seconds,
    )
    with running_haproxy(config):
        yield config


async def test_a_flood_through_haproxy_is_served_or_refused_there_with_the_apis_answer(
    front: Front, query_api: Process, tokens: Tokens, ids: Ids, base_settings: Settings
) -> None:
    rider = ids.rider()
    bearer = {"Authorization": f"Bearer {await tokens.aget(rider)}"}
    auth = f"Authorization: {bearer['Authorization']}\r\n"
    head = f"GET /users/{rider}/orders HTTP/1.1\r\nHost: t\r\n{auth}"
    port = int(front.query_front.rpartition(":")[2])
    url = f"http://{front.query_front}/users/{rider}/orders"
    async with httpx.AsyncClient(timeout=10) as client:  # HAProxy forwards: the API is up
        assert (await client.get(url, headers=bearer)).status_code == 200

    # half the callers give their own request id, half do not; one given id is unsafe
    given = [f"flood-{i}".encode() if i % 2 else None for i in range(64)]
    given[1] = b"bad id\x7f"
    requests = [
        (head + ("" if g is None else f"X-Request-ID: {g.decode('latin-1')}\r\n") + "\r\n").encode(
            "latin-1"
        )
        for g in given
    ]
    answers: list[tuple[bytes | None, bytes]] = []
    for _ in range(5):  # bursts until one overlaps a read in flight (the first does)
        answers += list(zip(given, await _burst(port, requests), strict=True))
        if any(a.startswith(b"HTTP/1.1 503") for _, a in answers):
            break
    samples = await scrape(query_api)
    async with httpx.AsyncClient(timeout=10) as client:
        after = await client.get(url, headers=bearer)

    statuses = Counter(int(a[9:12]) for _, a in answers)
    assert set(statuses) <= {200, 503}, statuses  # no other 5xx
    assert statuses[200] >= 1
    assert statuses[503] > 0
    retry_after = base_settings.serving.retry_after_seconds
    for id_given, answer in answers:
        found = ID.search(answer)
        assert found is not None, answer  # every answer carries the request's id
        if id_given is not None and id_given != b"bad id\x7f":
            assert found.group(1) == id_given  # the caller's, through HAProxy and back
        else:
            assert found.group(1) != id_given
        if answer.startswith(b"HTTP/1.1 503"):
            assert re.search(rb"\r\ncontent-type: application/problem\+json\r\n", answer, re.I)
            assert re.search(rb"\r\nretry-after: %d\r\n" % retry_after, answer, re.I)
            assert answer.endswith(b"\r\n\r\n" + overloaded_body(retry_after))
        else:
            assert answer.endswith(b'{"items":[],"next_cursor":null}')
    # every refusal was HAProxy's: the API shed none and has nothing left in flight
    assert samples[("http_requests_shed_total", (("app", "query_api"),))] == 0
    assert samples[("http_requests_in_flight", (("app", "query_api"),))] == 0
    assert after.status_code == 200  # served at once after the flood


async def test_a_backend_with_no_ready_process_is_refused_503_with_retry_after(
    front: Front, base_settings: Settings
) -> None:
    """The fixture's command backend has no process: every request is a 503 problem with
    Retry-After and an id, never another status; once the health checks have marked it
    down (2 failed checks, 2 s apart) the code says why: ``dependency_unavailable``."""
    retry_after = str(base_settings.serving.retry_after_seconds)
    codes = []
    async with httpx.AsyncClient(base_url=f"http://{front.command_front}", timeout=10) as client:
        for _ in range(100):
            answer = await client.get("/health/live")
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["retry-after"] == retry_after
            assert ID.search(
                b"\r\nx-request-id: " + answer.headers["x-request-id"].encode() + b"\r\n"
            )
            codes.append(answer.json()["code"])
            if codes[-1] == "dependency_unavailable":
                break
            await asyncio.sleep(0.1)
    assert codes[-1] == "dependency_unavailable", codes
    assert set(codes) <= {"overloaded", "dependency_unavailable"}  # before the checks: the backstop
