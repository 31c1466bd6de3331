"""``python -m tests.load.shed_cost``: what one shed request costs the API process (issue 8).

The command API runs with ``command_max_requests_in_flight = 1`` and one request holds
that slot for the whole run: a signed-in ``POST /offers`` whose body never arrives (the
request read timeout is raised so the server does not close it). Then, alternately,
``--rounds`` times:

- **health**: ``--concurrency`` clients call ``GET /health/live`` back to back (never
  shed; it goes through the whole Litestar stack and is the reference in the same run);
- **shed**: the same clients send signed-in ``POST /offers`` with a body; every one is
  answered ``503 overloaded``.

Reported per phase: answers/s, the client's p50/p99, and the API process's CPU time
per answer (``/proc/<pid>/stat``, 10 ms ticks over seconds of thousands of answers), so
the cost of shedding is read against the cost of the cheapest real request measured
on the same box at the same moment.

    uv run python -m tests.load.shed_cost --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import uvloop

from tests.load import scenarios
from tests.load.bench import bench_settings, bench_stub_settings, running_stack
from tests.load.client import Pool
from tests.load.harness import _stat, closed_loop, percentile


async def _phase(
    pid: int, args: argparse.Namespace, call: Callable[[], Awaitable[tuple[int, bytes]]]
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one() -> None:
        started = time.perf_counter()
        status, _ = await call()
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1

    before = _stat(pid)
    seconds = await closed_loop(args.concurrency, args.duration, one)
    after = _stat(pid)
    if before is None or after is None:
        raise RuntimeError("the command API is gone")
    latencies.sort()
    count = len(latencies)
    return {
        "answers": {str(k): v for k, v in sorted(statuses.items())},
        "per_s": round(count / seconds),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "server_cpu_us_per_answer": round((after[1] - before[1]) / count * 1e6, 1),
    }


async def measure(args: argparse.Namespace, settings: Any, pid: int) -> dict[str, Any]:
    riders, scooters = scenarios.riders_and_scooters(bench_stub_settings(settings), 1)
    rider, scooter = riders[0], scooters[0]
    auth = (await scenarios.sign_in(settings, [rider]))[rider]
    port = settings.serving.command_port
    body = msgspec.json.encode({"scooter_id": scooter})

    # the one slot: a signed-in offer whose body never comes
    _, holder = await asyncio.open_connection("127.0.0.1", port)
    holder.write(
        b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 64\r\n" + auth.encode() + b"\r\n"
    )
    await holder.drain()
    await asyncio.sleep(0.5)
    pool = Pool("127.0.0.1", port, max_connections=args.concurrency)
    status, answer = await pool.request("POST", "/offers", body, auth)
    if status != 503:
        raise RuntimeError(f"the slot is not held: {status} {answer[:200]!r}")

    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        health = await _phase(pid, args, lambda: pool.request("GET", "/health/live"))
        shed = await _phase(pid, args, lambda: pool.request("POST", "/offers", body, auth))
        rounds.append({"health": health, "shed": shed})
    pool.close()
    holder.close()
    return {"concurrency": args.concurrency, "duration_s": args.duration, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    settings = bench_settings(1, 1).replace(
        serving={
            "command_max_requests_in_flight": 1,
            "request_read_timeout_seconds": 3600.0,
        },
    )
    uvloop.install()
    with running_stack(settings, ("stubs", "command_api")) as bench:
        result = asyncio.run(measure(args, settings, bench.pids["command_api"]))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
