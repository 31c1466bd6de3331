"""Both APIs with two uvicorn workers each (``SCOOTERS_COMMAND_WORKERS`` /
``SCOOTERS_QUERY_WORKERS`` = 2), as real processes over the scaled-out engines, and one
``/metrics`` answer that covers every worker (prometheus-client multiprocess mode,
``shared/infra/serving.py``): the internal metrics port of each API (the first of the
range its workers take, ``shared/infra/metrics_server.py``) answers with the service's
totals. Requests carry the bearer token of their rider (tests/auth.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.auth import Tokens, acting_rider
from tests.conftest import start_process, stop_process, wait_http
from tests.e2e.conftest import Ids
from tests.ports import free_port, free_ports

ORDER_ROUTE = "/orders/{order_id}"


@pytest.fixture(scope="module")
def two_workers(scaled_settings: Settings, stubs: str) -> Iterator[Settings]:
    """Projector, command API and query API as processes, two workers per API; each API's
    workers serve ``/metrics`` on its metrics port and the next one."""
    settings = scaled_settings.replace(
        serving={
            "command_workers": 2,
            "query_workers": 2,
            "command_port": free_port(),
            "query_port": free_port(),
            "command_metrics_port": free_ports(offsets=(0, 1))[0],
            "query_metrics_port": free_ports(offsets=(0, 1))[0],
        },
        read={"projector_metrics_port": 0},
    )
    procs = []
    try:
        for module in ("query_api.projector", "command_api", "query_api"):
            procs.append(start_process(module, settings))
        serving = settings.serving
        wait_http(f"http://127.0.0.1:{serving.command_port}/health/live", 120, procs[1])
        wait_http(f"http://127.0.0.1:{serving.query_port}/health/live", 120, procs[2])
        # One answer on the shared public port means one worker is up, not both: each
        # worker is a spawned process that re-imports the app (seconds on a loaded
        # machine; SCOOTERS_WORKER_HEALTHCHECK_SECONDS keeps uvicorn's supervisor from
        # replacing it meanwhile, tests/scale/test_worker_start.py). A worker opens its
        # metrics port during its lifespan, so both ports of an API answering means both
        # of its workers are there to scrape.
        for port, proc in (
            (serving.command_metrics_port, procs[1]),
            (serving.query_metrics_port, procs[2]),
        ):
            for worker in range(2):
                wait_http(f"http://127.0.0.1:{port + worker}/metrics", 120, proc)
        yield settings
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def client(port: int, tokens: Tokens | None = None) -> httpx.AsyncClient:
    """A client that opens a new connection per request, so that the kernel spreads the
    requests over the workers sharing the listening socket; with ``tokens``, each request
    carries the token of the rider it is for."""
    made = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=10,
    )
    if tokens is not None:
        acting_rider(made, tokens)
    return made


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def requests_counted(text: str, app: str, method: str, route: str, status: str) -> float:
    wanted = {"app": app, "method": method, "route": route, "status": status}
    return sum(
        value
        for labels, value in samples(text, "http_request_duration_seconds_count")
        if all(labels.get(k) == v for k, v in wanted.items())
    )


async def test_two_workers_per_api_serve_rides_and_one_metrics_answer_covers_both(
    two_workers: Settings, ids: Ids, tokens: Tokens
) -> None:
    rides = 6
    reads = 0
    serving = two_workers.serving
    async with (
        client(serving.command_port, tokens) as command,
        client(serving.query_port, tokens) as query,
        client(serving.command_metrics_port) as command_metrics,
        client(serving.query_metrics_port) as query_metrics,
        client(serving.command_metrics_port + 1) as command_metrics_next,
        client(serving.query_metrics_port + 1) as query_metrics_next,
    ):

        async def ride() -> str:
            offer = await command.post(
                "/offers", json={"user_id": ids.rider(), "scooter_id": ids.scooter()}
            )
            assert offer.status_code == 201, offer.text
            order = await command.post("/orders", json={"offer_token": offer.json()["token"]})
            assert order.status_code == 201, order.text
            oid: str = order.json()["id"]
            done = await command.post(f"/orders/{oid}/finish", json={"track": []})
            assert done.status_code == 200, done.text
            return oid

        order_ids = await asyncio.gather(*(ride() for _ in range(rides)))

        async def read(oid: str) -> dict[str, Any]:
            nonlocal reads
            response = await query.get(f"/orders/{oid}")
            assert response.status_code == 200, response.text
            reads += 1
            body: dict[str, Any] = response.json()
            return body

        for oid in order_ids:  # shown through the projector and the cluster
            for _ in range(200):
                if (await read(oid))["status"] != "active":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"order {oid} never showed finished")
        await asyncio.gather(*(read(oid) for oid in order_ids * 5))

        # every scrape, whichever worker's metrics port answers it, shows the service's totals
        query_pids: set[str] = set()
        scrapers = [(query_metrics, command_metrics), (query_metrics_next, command_metrics_next)]
        for query_scraper, command_scraper in scrapers * 3:
            text = (await query_scraper.get("/metrics")).text
            assert requests_counted(text, "query_api", "GET", ORDER_ROUTE, "200") == reads
            # one sample per worker process of a per-process gauge: both workers count
            query_pids |= {lab["pid"] for lab, _ in samples(text, "projector_lag_seconds")}
            text = (await command_scraper.get("/metrics")).text
            assert requests_counted(text, "command_api", "POST", "/offers", "201") == rides
            assert requests_counted(text, "command_api", "POST", "/orders", "201") == rides
        assert len(query_pids) == 2, query_pids
