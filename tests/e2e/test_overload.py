"""Overload and slow clients (issue 8, item 6): shed at once, never queue; slow
connections are timed out and capped. Each API runs as a real uvicorn process.

Shedding happens in the HTTP protocol, before Litestar: a shed request shows in
``http_requests_shed_total`` and never in ``http_request_duration_seconds`` (recorded by
the apps' middleware), and ``http_requests_in_flight`` is back to 0 after a burst.

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
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.infra.admission import GuardedHttpToolsProtocol
from shared.settings import Settings
from tests.auth import Tokens
from tests.conftest import start_process, stop_process, wait_http
from tests.e2e.conftest import Ids, set_fault
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("reset_faults")

IN_FLIGHT = 8
QUERY_IN_FLIGHT = 2
MAX_CONNECTIONS = 64
READ_TIMEOUT = 1.0


@dataclass
class Process:
    url: str
    metrics_url: str
    port: int


@contextmanager
def api_process(module: str, settings: Settings, **limits: Any) -> Iterator[Process]:
    """``python -m module`` (``command_api`` or ``query_api``) with ``limits``, a port and
    a metrics port of its own."""
    side = module.split("_")[0]
    port, metrics_port = free_port(), free_port()
    settings = settings.replace(
        serving={f"{side}_port": port, f"{side}_metrics_port": metrics_port, **limits}
    )
    proc: subprocess.Popen[bytes] = start_process(module, settings)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/live", proc=proc)
        yield Process(url, f"http://127.0.0.1:{metrics_port}/metrics", port)
    finally:
        stop_process(proc)


def command_api_process(settings: Settings, **limits: Any) -> Any:
    """``python -m command_api`` with ``limits``; yields a :class:`Process`."""
    return api_process("command_api", settings, **limits)


async def scrape(process: Process) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The process's samples: {(name, sorted labels): value}."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(process.metrics_url)).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def assert_shed_by_the_protocol(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], app: str, shed: int
) -> None:
    """Every 503 came from the protocol (none reached the app), none is in flight."""
    assert samples[("http_requests_shed_total", (("app", app),))] == shed
    reached_app = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "http_request_duration_seconds_count" and ("status", "503") in labels
    }
    assert not reached_app, reached_app
    assert samples[("http_requests_in_flight", (("app", app),))] == 0


@pytest.fixture
def guarded_api(base_settings: Settings, database: str, stubs: str) -> Iterator[Process]:
    """At most ``IN_FLIGHT`` requests in flight, connections not capped below 512."""
    with command_api_process(base_settings, command_max_requests_in_flight=IN_FLIGHT) as api:
        yield api


@pytest.fixture
def guarded_query_api(base_settings: Settings, database: str, stubs: str) -> Iterator[Process]:
    """The query API with at most ``QUERY_IN_FLIGHT`` requests in flight."""
    with api_process(
        "query_api", base_settings, query_max_requests_in_flight=QUERY_IN_FLIGHT
    ) as api:
        yield api


@pytest.fixture
def capped_api(base_settings: Settings, database: str, stubs: str) -> Iterator[str]:
    """At most ``MAX_CONNECTIONS`` connections; a request must arrive within READ_TIMEOUT."""
    with command_api_process(
        base_settings,
        max_connections=MAX_CONNECTIONS,
        request_read_timeout_seconds=READ_TIMEOUT,
    ) as api:
        yield api.url


async def test_512_concurrent_offers_are_served_or_shed_at_once_and_recover(
    guarded_api: Process, stubs: str, ids: Ids, tokens: Tokens
) -> None:
    await set_fault(stubs, "scooters", latency_ms=100)  # each admitted offer takes a while
    riders = [ids.rider() for _ in range(16)]
    auth = {rider: tokens.headers(rider) for rider in riders}  # fetched before the burst
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=guarded_api.url, limits=limits, timeout=30) as client:

        async def offer(i: int) -> httpx.Response:
            rider = riders[i % len(riders)]
            body = {"user_id": rider, "scooter_id": f"scooter-{100 + i}"}
            return await client.post("/offers", json=body, headers=auth[rider])

        answers = await asyncio.gather(*(offer(i) for i in range(512)))
        health = await client.get("/health/live")  # never shed
        samples = await scrape(guarded_api)
        # still slow: IN_FLIGHT offers at once fit only if every place was released
        after = await asyncio.gather(*(offer(i) for i in range(IN_FLIGHT)))
        await set_fault(stubs, "scooters", latency_ms=0)

    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {201, 503}, statuses  # no 500, no other error
    assert statuses[201] >= IN_FLIGHT
    assert statuses[503] > 0
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "2"
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "overloaded"
        else:
            assert answer.json()["token"]  # an offer, as asked
    assert health.status_code == 200
    assert_shed_by_the_protocol(samples, "command_api", statuses[503])
    assert [a.status_code for a in after] == [201] * IN_FLIGHT  # recovered at once


async def _burst(port: int, requests: list[bytes]) -> list[bytes]:
    """Open a connection per request, then write them all at once; the answers."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in requests]
    for (_, writer), request in zip(connections, requests, strict=True):
        writer.write(request)
    answers = []
    for reader, writer in connections:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answers.append(head + await asyncio.wait_for(reader.readexactly(length), 30))
        writer.close()
    return answers


async def test_a_burst_of_reads_is_served_or_shed_by_the_protocol(
    guarded_query_api: Process, tokens: Tokens, ids: Ids
) -> None:
    rider = ids.rider()
    token = await tokens.aget(rider)
    request = (
        f"GET /users/{rider}/orders HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    answers: list[bytes] = []
    for _ in range(5):  # bursts until one overlaps the reads in flight (the first does)
        answers += await _burst(guarded_query_api.port, [request] * 64)
        if any(a.startswith(b"HTTP/1.1 503") for a in answers):
            break
    samples = await scrape(guarded_query_api)
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(
            f"{guarded_query_api.url}/users/{rider}/orders",
            headers={"Authorization": f"Bearer {token}"},
        )

    statuses = Counter(int(a[9:12]) for a in answers)
    assert set(statuses) <= {200, 503}, statuses  # no 500, no other error
    assert statuses[200] >= QUERY_IN_FLIGHT
    assert statuses[503] > 0
    for answer in answers:
        if answer.startswith(b"HTTP/1.1 503"):
            assert b"\r\nretry-after: 2\r\n" in answer
            assert b"\r\ncontent-type: application/problem+json\r\n" in answer
            assert answer.endswith(b'"code":"overloaded"}')
        else:
            assert answer.endswith(b'{"items":[],"next_cursor":null}')
    assert_shed_by_the_protocol(samples, "query_api", statuses[503])
    assert page.status_code == 200  # recovered at once


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


def test_both_apis_are_served_with_their_admission_limits(
    base_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    import command_api.__main__
    import query_api.__main__

    settings = base_settings.replace(
        serving={
            "command_max_requests_in_flight": 5,
            "query_max_requests_in_flight": 7,
            "command_admission_lag_target_ms": 0,
            "query_admission_lag_target_ms": 3,
        }
    )
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update({app: kw}))
    for main, module in ((command_api.__main__, "command_api"), (query_api.__main__, "query_api")):
        monkeypatch.setattr(main, "get_settings", lambda: settings)
        main.main()
        http = served[f"{module}.app:create_app"]["http"]
        assert http.func is GuardedHttpToolsProtocol
        admission = http.keywords["admission"]
        assert (admission.app_name, admission.limit) == (
            module,
            {"command_api": 5, "query_api": 7}[module],
        )
        assert admission.retry_after_seconds == settings.serving.retry_after_seconds
        assert admission.lag_target_seconds == {"command_api": 0, "query_api": 0.003}[module]
