"""Overload and slow clients (issue 8, item 6): shed at once, never queue; slow
connections are timed out and capped. The command API runs as a real uvicorn process.

Outcomes are asserted (every answer is a success or a 503 ``overloaded`` with
``Retry-After``; slow connections are closed by the server; a normal client is served
while they are open), not timings; docs/benchmarks.md has the measured numbers.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.auth import Tokens
from tests.conftest import free_port, start_process, wait_http
from tests.e2e.conftest import Ids, set_fault

pytestmark = pytest.mark.usefixtures("reset_faults")

IN_FLIGHT = 8
MAX_CONNECTIONS = 64
READ_TIMEOUT = 1.0


@contextmanager
def command_api_process(settings: Settings, **limits: Any) -> Iterator[str]:
    """``python -m command_api`` with ``limits``; yields its base URL."""
    settings = settings.replace(serving={"command_port": free_port(), **limits})
    proc: subprocess.Popen[bytes] = start_process("command_api", settings)
    url = f"http://127.0.0.1:{settings.serving.command_port}"
    try:
        wait_http(f"{url}/health/live", proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def guarded_api(base_settings: Settings, database: str, stubs: str) -> Iterator[str]:
    """At most ``IN_FLIGHT`` requests in flight, connections not capped below 512."""
    with command_api_process(base_settings, command_max_requests_in_flight=IN_FLIGHT) as url:
        yield url


@pytest.fixture
def capped_api(base_settings: Settings, database: str, stubs: str) -> Iterator[str]:
    """At most ``MAX_CONNECTIONS`` connections; a request must arrive within READ_TIMEOUT."""
    with command_api_process(
        base_settings,
        max_connections=MAX_CONNECTIONS,
        request_read_timeout_seconds=READ_TIMEOUT,
    ) as url:
        yield url


async def test_512_concurrent_offers_are_served_or_shed_at_once_and_recover(
    guarded_api: str, stubs: str, ids: Ids, tokens: Tokens
) -> None:
    await set_fault(stubs, "scooters", latency_ms=100)  # each admitted offer takes a while
    riders = [ids.rider() for _ in range(16)]
    auth = {rider: tokens.headers(rider) for rider in riders}  # fetched before the burst
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=guarded_api, limits=limits, timeout=30) as client:

        async def offer(i: int) -> httpx.Response:
            rider = riders[i % len(riders)]
            body = {"user_id": rider, "scooter_id": f"scooter-{100 + i}"}
            return await client.post("/offers", json=body, headers=auth[rider])

        answers = await asyncio.gather(*(offer(i) for i in range(512)))
        health = await client.get("/health/live")  # never shed
        await set_fault(stubs, "scooters", latency_ms=0)
        after = await asyncio.gather(*(offer(i) for i in range(IN_FLIGHT)))

    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[201] >= IN_FLIGHT
    assert statuses[503] > 0
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "2"
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "overloaded"
    assert health.status_code == 200
    assert [a.status_code for a in after] == [201] * IN_FLIGHT  # recovered at once


async def _slow_client(port: int, stop: asyncio.Event) -> bytes:
    """Send one header line at a time, never finishing the request; what the server said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        line = 0
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                line += 1
                writer.write(b"X-Slow-%d: 1\r\n" % line)
                await writer.drain()
                continue
            if not chunk:
                return answer + b"<closed>"
            answer += chunk
    except ConnectionError:
        return answer + b"<reset>"
    finally:
        writer.close()
    return answer


async def test_slow_header_connections_are_timed_out_and_capped(capped_api: str) -> None:
    port = int(capped_api.rsplit(":", 1)[1])
    stop = asyncio.Event()
    slow = [asyncio.create_task(_slow_client(port, stop)) for _ in range(4 * MAX_CONNECTIONS)]
    await asyncio.sleep(0.3)  # all of them connected and dripping headers
    async with httpx.AsyncClient(base_url=capped_api, timeout=10) as client:
        served = [await client.get("/health/live") for _ in range(5)]
    done, pending = await asyncio.wait(slow, timeout=READ_TIMEOUT * 5)
    stop.set()
    outcomes = [t.result() for t in done] + list(await asyncio.gather(*pending))

    assert [r.status_code for r in served] == [200] * 5  # new clients get in meanwhile
    assert not pending, f"{len(pending)} slow connections were still open"
    assert all(o.endswith((b"<closed>", b"<reset>")) for o in outcomes)  # the server closed
    refused = [o for o in outcomes if o.startswith(b"HTTP/1.1 503")]
    for answer in refused:
        assert b"retry-after: 2" in answer
        assert b'"code":"overloaded"' in answer


def test_guards_are_wired_into_both_apps(base_settings: Settings) -> None:
    from command_api.app import create_app as command_app
    from query_api.app import create_app as query_app

    for app in (command_app(base_settings), query_app(base_settings)):
        names = [getattr(m, "__qualname__", "") for m in app.middleware]
        assert any("admission_control" in n for n in names), names
        # outermost first: an overloaded process sheds before verifying a bearer token
        admission = next(i for i, n in enumerate(names) if "admission_control" in n)
        sign_in = next(i for i, n in enumerate(names) if "bearer_auth" in n)
        assert admission < sign_in, names
