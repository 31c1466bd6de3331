"""``python -m tests.load.overload``: overload and slow clients against one API (issue 8, item 6).

For each ``--in-flight`` value (``*_max_requests_in_flight``; 0 = no limit) a
fresh stack runs three phases back to back on one endpoint (``query``:
``GET /orders/{id}``; ``command``: ``POST /offers``):

1. capacity: closed loop, ``--concurrency`` clients (no more than the limit in flight,
   so that none is shed: more would spin on 503s), as fast as the box answers;
2. overload: open loop at ``--factor`` times that capacity through at most ``--connections``
   client connections (a request waits for a free one, which counts in its latency);
3. recovery: open loop at half the capacity, right after.

Reported per phase: answers/s by status, p50/p99 of the admitted (2xx) answers and of
the shed ones (503), and the CPU the API process and the generator used (cores, from ``/proc``).
``--slowloris N`` then opens N connections that send one header line every ``--drip``
seconds and measures normal requests while they are open.

    uv run python -m tests.load.overload query --in-flight 0 --in-flight 64
    uv run python -m tests.load.overload command --in-flight 64 --slowloris 19000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import uvloop

from shared.settings import Settings
from tests.load import scenarios
from tests.load.bench import bench_settings, bench_stub_settings, running_stack
from tests.load.client import Connection, HttpError, Pool
from tests.load.harness import _stat, closed_loop, percentile

STACKS = {
    "query": ("stubs", "command_api", "worker", "projector", "query_api"),
    "command": ("stubs", "command_api", "worker"),
}


class Phase:
    """Latencies by status of one phase, and the CPU seconds of the API process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.pid = pid
        self.cpu_started = self._cpu()

    def _cpu(self) -> tuple[float, float]:
        """CPU seconds of the API process and of this generator."""
        api, generator = _stat(self.pid), _stat(os.getpid())
        return (0.0 if api is None else api[1], 0.0 if generator is None else generator[1])

    async def call(self, request: Awaitable[tuple[int, bytes]]) -> None:
        started = time.perf_counter()
        try:
            status, _ = await request
            kind = str(status)
        except (HttpError, OSError, TimeoutError) as exc:
            kind = type(exc).__name__
        self.latencies[kind].append(time.perf_counter() - started)

    def report(self, seconds: float) -> dict[str, Any]:
        (api, generator), (api_0, generator_0) = self._cpu(), self.cpu_started
        out: dict[str, Any] = {
            "seconds": round(seconds, 1),
            "api_cpu_cores": round((api - api_0) / seconds, 2),
            "generator_cpu_cores": round((generator - generator_0) / seconds, 2),
        }
        for kind, values in sorted(self.latencies.items()):
            values.sort()
            out[kind] = {
                "count": len(values),
                "per_s": round(len(values) / seconds, 1),
                "p50_ms": round(percentile(values, 0.5) * 1000, 1),
                "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            }
        return out

    def ok_per_second(self, seconds: float) -> float:
        return sum(len(v) for k, v in self.latencies.items() if k.startswith("2")) / seconds


async def open_loop(rate: float, duration: float, one: Callable[[], Awaitable[None]]) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: set[asyncio.Task[None]] = set()
    for i in range(int(rate * duration)):
        delay = started + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task: asyncio.Task[None] = loop.create_task(one())  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    return loop.time() - started


async def phases(
    args: argparse.Namespace,
    port: int,
    request: Callable[[Any], Any],
    in_flight: int,
    pid: int,
) -> Any:
    pool = Pool("127.0.0.1", port, max_connections=args.connections)
    capacity = Phase(pid)
    clients = min(args.concurrency, in_flight) if in_flight > 0 else args.concurrency
    seconds = await closed_loop(clients, args.duration, lambda: capacity.call(request(pool)))
    cap = capacity.ok_per_second(seconds)
    overload = Phase(pid)
    over_s = await open_loop(cap * args.factor, args.duration, lambda: overload.call(request(pool)))
    recovery = Phase(pid)
    rec_s = await open_loop(cap / 2, args.duration / 2, lambda: recovery.call(request(pool)))
    pool.close()
    return {
        f"capacity ({clients} clients)": capacity.report(seconds),
        f"overload {args.factor:g}x ({cap * args.factor:.0f}/s offered)": overload.report(over_s),
        f"recovery ({cap / 2:.0f}/s offered)": recovery.report(rec_s),
    }


async def slowloris(
    args: argparse.Namespace, port: int, request: Callable[[Any], Any], pid: int
) -> Any:
    """N connections dripping header lines; normal requests meanwhile."""
    stop = asyncio.Event()
    closed_by_server = 0
    opened = 0

    async def drip() -> None:
        nonlocal closed_by_server, opened
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        opened += 1
        try:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            line = 0
            while not stop.is_set():
                try:
                    if not await asyncio.wait_for(reader.read(4096), args.drip):
                        closed_by_server += 1
                        return
                except TimeoutError:
                    line += 1
                    writer.write(b"X-Slow-%d: 1\r\n" % line)
        except ConnectionError:
            closed_by_server += 1
        finally:
            writer.close()

    drips = []
    for _ in range(args.slowloris):
        drips.append(asyncio.create_task(drip()))
        if len(drips) % 500 == 0:
            await asyncio.sleep(0.05)  # let them connect
    await asyncio.sleep(2)
    normal = Phase(pid)
    started = time.perf_counter()
    for _ in range(200):
        conn = Connection("127.0.0.1", port)  # a new client: a new connection each
        await normal.call(asyncio.wait_for(request(conn), 10))
        conn.close()
    seconds = time.perf_counter() - started
    await asyncio.sleep(args.drip * 2)
    stop.set()
    await asyncio.gather(*drips, return_exceptions=True)
    return {
        "slow connections opened": opened,
        "closed by the server": closed_by_server,
        "200 new clients, one request each": normal.report(seconds),
    }


def run(args: argparse.Namespace, in_flight: int) -> dict[str, Any]:
    settings = bench_settings(1, 1).replace(
        serving={
            "command_max_requests_in_flight": in_flight,
            "query_max_requests_in_flight": in_flight,
            "request_read_timeout_seconds": args.read_timeout,
            "max_connections": args.max_connections,
        },
        # the riders offer far more often than a person would: measure the shedding,
        # not the per-rider offer rate limit (429)
        offers={"rate_limit": 1_000_000},
    )
    with running_stack(settings, STACKS[args.side]) as bench:
        return asyncio.run(measure(args, settings, bench.pids[f"{args.side}_api"]))


async def measure(args: argparse.Namespace, settings: Settings, pid: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_requests_in_flight": settings.serving.command_max_requests_in_flight,
        "request_read_timeout_seconds": settings.serving.request_read_timeout_seconds,
        "max_connections": settings.serving.max_connections,
    }
    if args.side == "query":
        seeded = await scenarios.seed_orders(settings, 300, 1024)
        # each order read by its rider (bearer token from the identity stub)
        reads = [
            (order, seeded.auth[seeded.owner[order]])
            for order in seeded.orders["active"]
            + seeded.orders["finished"]
            + seeded.orders["older"]
        ]
        port = settings.serving.query_port

        def request(pool: Pool | Connection) -> Any:
            order, auth = random.choice(reads)
            return pool.request("GET", f"/orders/{order}", None, auth)
    else:
        riders, scooters = scenarios.riders_and_scooters(bench_stub_settings(settings), 2000)
        auth = await scenarios.sign_in(settings, list(riders))  # before the measured phases
        offers = [
            (msgspec.json.encode({"scooter_id": s}), auth[r])
            for r, s in zip(riders, list(scooters)[: len(riders)], strict=True)
        ]
        port = settings.serving.command_port

        def request(pool: Pool | Connection) -> Any:
            body, auth_line = random.choice(offers)
            return pool.request("POST", "/offers", body, auth_line)

    in_flight = settings.serving.command_max_requests_in_flight
    out.update(await phases(args, port, request, in_flight, pid))
    if args.slowloris:
        out["slowloris"] = await slowloris(args, port, request, pid)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=sorted(STACKS))
    parser.add_argument("--in-flight", type=int, action="append", default=None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--slowloris", type=int, default=0)
    parser.add_argument("--drip", type=float, default=5.0)
    defaults = Settings().serving
    parser.add_argument("--read-timeout", type=float, default=defaults.request_read_timeout_seconds)
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.install()
    results = [run(args, n) for n in args.in_flight or [64]]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
