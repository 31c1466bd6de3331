"""Workers that start slowly are not killed by uvicorn's supervisor (issue 8, metrics and
workers).

With several workers uvicorn's supervisor pings each worker every 0.5 s and kills and
replaces one that does not answer within ``timeout_worker_healthcheck`` (5 s by
default). A worker is a spawned process that first imports the ``__main__`` module
again, and answers pings only after that; importing an API's ``__main__`` took 9-10 s on
this box under load. The test server's workers sleep 7 s in that import
(tests/scale/slow_start_server.py): with uvicorn's 5 s they are killed while starting
(the supervisor logs "Child process [...] died" and starts another, which fares the
same); with our ``SCOOTERS_WORKER_HEALTHCHECK_SECONDS`` (60 s) both start once and serve.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SLOW_START_SECONDS = 7


def run_server(port: int, log: Path, healthcheck: int | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(ROOT / "tests/scale/slow_start_server.py"), str(port)]
    if healthcheck is not None:
        args.append(str(healthcheck))
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(ROOT),
                "SLOW_START_SECONDS": str(SLOW_START_SECONDS),
            },
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pids_answering(port: int, seconds: float) -> set[int]:
    """Worker pids seen answering within ``seconds`` (a new connection per request, so
    the kernel spreads them over the workers); stops early once two answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(seen) < 2:
        try:
            with httpx.Client(timeout=2) as client:
                seen.add(int(client.get(f"http://127.0.0.1:{port}/pid").json()["pid"]))
        except httpx.HTTPError:
            time.sleep(0.2)
    return seen


@pytest.mark.parametrize(
    ("healthcheck", "killed"),
    [(5, True), (None, False)],
    ids=["uvicorn_default_5s", "our_default"],
)
def test_slow_starting_workers_are_killed_only_with_uvicorns_default(
    healthcheck: int | None, killed: bool
) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = run_server(port, log, healthcheck)
        try:
            if killed:
                deadline = time.monotonic() + 4 * SLOW_START_SECONDS
                while time.monotonic() < deadline and "died" not in log.read_text():
                    time.sleep(0.5)
                assert "died" in log.read_text(), log.read_text()
                return
            pids = pids_answering(port, 6 * SLOW_START_SECONDS)
            assert len(pids) == 2, log.read_text()
            time.sleep(2)  # a few more rounds of pings
            output = log.read_text()
            assert "died" not in output, output
            assert proc.poll() is None, output
        finally:
            stop(proc)
