"""A flood of bad requests writes a bounded log (issue 8): uvicorn's one warning per
request that no HTTP parser takes ("Invalid HTTP request received.") or that asks for an
Upgrade we do not serve is written ``log_noise_burst`` times per interval, then reported
as one ``log lines suppressed`` line per kind; ``http_malformed_requests_total`` counts
every one. Each service runs as a real process; the requests are raw bytes over sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from stubs import StubSettings
from tests.conftest import ROOT, stop_process, wait_http
from tests.ports import free_port

BURST = 4
GARBAGE = 150
UPGRADES = 12
INVALID = "Invalid HTTP request received."
UPGRADE = "Unsupported upgrade request."


@dataclass
class Served:
    url: str
    metrics_url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def serving(
    module: str, settings: Settings, log: Path, extra_env: dict[str, str]
) -> Iterator[Served]:
    """``python -m module`` whose stderr goes to ``log``; stopped (SIGTERM) on exit."""
    env = {**os.environ, **settings.to_env(), **extra_env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            if module == "stubs":
                port = int(extra_env["SCOOTERS_STUBS_PORT"])
                metrics = f"http://127.0.0.1:{port}/metrics"
            else:
                side = module.split("_")[0]
                port = getattr(settings.serving, f"{side}_port")
                metrics_port = getattr(settings.serving, f"{side}_metrics_port")
                metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health/live", proc=proc)
            yield Served(url, metrics, port, proc, log)
        finally:
            stop_process(proc)


@pytest.fixture(params=["stubs", "command_api", "query_api"])
def served(
    request: pytest.FixtureRequest,
    base_settings: Settings,
    stub_settings: StubSettings,
    tmp_path: Path,
) -> Iterator[Served]:
    """The stubs (production mode: JSON lines) or an API (development mode: logfmt; an
    API in production mode refuses the test database's development password) with a
    burst of ``BURST`` lines in one window longer than the test."""
    module = request.param
    settings = base_settings.replace(
        runtime={"log_noise_burst": BURST, "log_noise_interval_seconds": 600.0},
        serving={
            "command_port": free_port(),
            "command_metrics_port": free_port(),
            "query_port": free_port(),
            "query_metrics_port": free_port(),
        },
    )
    extra: dict[str, str] = {}
    if module == "stubs":
        # the stubs use no database; production refuses the development password in a DSN
        settings = settings.replace(
            runtime={"environment": "production"}, db={"url": "postgresql://stubs@127.0.0.1/-"}
        )
        extra = {**stub_settings.replace(port=free_port()).to_env()}
    else:
        request.getfixturevalue("database")
        request.getfixturevalue("stubs")
    with serving(module, settings, tmp_path / f"{module}.log", extra) as process:
        yield process


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65_536), 10)
    finally:
        writer.close()


async def _flood(port: int, data: bytes, count: int) -> list[bytes]:
    limit = asyncio.Semaphore(25)

    async def one() -> bytes:
        async with limit:
            return await _send(port, data)

    return await asyncio.gather(*(one() for _ in range(count)))


def events(log: Path) -> list[dict[str, str]]:
    """Each line of ``log`` as a dict: JSON (production) or logfmt (development)."""
    parsed = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            parsed.append({k: str(v) for k, v in json.loads(line).items()})
        else:
            pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line)
            parsed.append({k: v[1:-1] if v.startswith('"') else v for k, v in pairs})
    return parsed


async def test_a_flood_of_bad_requests_writes_a_bounded_log_and_counts_them_all(
    served: Served,
) -> None:
    garbage = b"GARBAGE /\x00 HTTP/1.1\r\n\r\n"
    answers = await _flood(served.port, garbage, GARBAGE)
    for answer in answers:  # each still gets its 400 problem with a request id
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        assert b"\r\nx-request-id: " in answer
        assert b'"code":"invalid_request"' in answer
    upgrade = (
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for answer in await _flood(served.port, upgrade, UPGRADES):
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(served.metrics_url)).text
    counted = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_malformed_requests_total"
    }
    assert counted == {"invalid": GARBAGE, "upgrade": UPGRADES}

    stop_process(served.proc)  # the app's shutdown reports what was suppressed
    lines = events(served.log)
    written = [e["event"] for e in lines]
    assert written.count(INVALID) == BURST
    assert written.count(UPGRADE) == BURST
    assert not any("WebSocket library" in event for event in written)
    summaries = {
        e["kind"]: int(e["suppressed"]) for e in lines if e["event"] == "log lines suppressed"
    }
    assert summaries == {"invalid": GARBAGE - BURST, "upgrade": UPGRADES - BURST}
    # the whole log: those lines, and no more than a few others (start, stop)
    assert len(lines) <= 2 * BURST + 2 + 5, lines
