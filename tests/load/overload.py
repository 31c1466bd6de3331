"""``python -m tests.load.overload``: overload and slow clients against one API (issue 8, item 6).

For each ``--in-flight`` value (``*_max_requests_in_flight``; 0 = no limit) a
fresh stack runs three phases back to back on one endpoint (``query``:
``GET /orders/{id}``; ``command``: ``POST /offers``):

1. capacity: closed loop, ``--concurrency`` clients (no more than the limit in flight,
   so that none is shed: more would spin on 503s), as fast as the box answers;
2. overload: open loop at ``--factor`` times that capacity (or ``--rate``) through
   ``--connections`` client connections, opened before it starts (a request waits for
   a free one, which counts in its latency);
3. recovery: open loop at half the capacity, right after.

The requests come from :class:`tests.load.client.Blaster`: callbacks only, requests
made once as bytes, a few microseconds of the generator's CPU each (on a 2-core box the
generator shares the cores with the API, so it must cost far less than an answer).
Reported per phase: answers/s by status, p50/p99 from when each request was due and
from when it was written (``server_``: without the wait for a free connection), and
the CPU of the API process and of the generator, in cores and in µs per answer.
``--compare-code DIR`` runs the same API from another checkout beside this one's, on
the same stack, and measures both alternately (``--rounds`` times each) with the same
generator. ``--slowloris N`` then opens N connections that send one header line every
``--drip`` seconds and measures normal requests while they are open. ``--pin`` puts the
API under test on the first core and the generator on the second (every thread of each:
affinity is per thread), so that the generator, which stands for clients on other
machines, does not take the API's core in the overload phase; the engines and the stubs
stay where the scheduler puts them. ``--workers N`` runs the API under test as N
uvicorn worker processes (the CPU columns then add up the workers).

``--front haproxy`` puts HAProxy with the repo's ``deploy/haproxy.cfg`` in front of the
API under test (ADR 0024; one thread, ``--front-threads``; per-server ``maxconn``
``--front-maxconn``, by default the capacity phase's clients): the generator talks to
HAProxy, which refuses what finds no free slot itself; its CPU is reported as
``front_cpu_cores`` (with ``--pin`` it runs beside the generator). It needs the
``haproxy`` binary (a deployment artifact, not part of the set-up: ``apt-get install
haproxy``). ``--api-cpu C`` limits the API under test (every worker) to C cores with a
cgroup v1 CPU quota (a child cgroup of ``/sys/fs/cgroup/cpu``, period
``--api-cpu-period-ms``, removed after), so that 4x its capacity fits on a small box
beside the generator and the proxy; ``api_throttled_periods_share`` is the share of
periods in which it ran out of quota.

The **server's view** of the admitted requests, per phase: the difference of the API's
``http_request_duration_seconds`` histogram (read from its ``/metrics`` port before and
after the phase) for the 2xx answers, as ``server_view``: the time from the app's call
to its return in the process, so without the wait in socket buffers before the process
reads a request; p50/p99 are the histogram's bucket bounds ("≤").

    uv run python -m tests.load.overload query --in-flight 128 --duration 10
    uv run python -m tests.load.overload query --in-flight 128 --compare-code ../ref
    uv run python -m tests.load.overload command --in-flight 64 --slowloris 19000
    uv run python -m tests.load.overload query --in-flight 32 --api-cpu 0.3 --front haproxy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from shared.settings import Settings
from tests.front import HAPROXY, MISSING, Front, running_haproxy
from tests.load import scenarios
from tests.load.bench import (
    bench_settings,
    bench_stub_settings,
    extra_command_api,
    extra_query_api,
    running_stack,
)
from tests.load.client import Blaster, Connection, HttpError, Pool
from tests.load.harness import _stat, percentile
from tests.ports import free_port

SHED = -1.0  # admitted_histogram's key of the requests the API shed itself
CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller

STACKS = {
    "query": ("stubs", "command_api", "worker", "projector", "query_api"),
    "command": ("stubs", "command_api", "worker"),
}


def _family(pid: int) -> list[int]:
    """``pid`` and its child processes (uvicorn's workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


@contextmanager
def cpu_quota(pids: list[int], cores: float, period_ms: float) -> Iterator[Path]:
    """Processes ``pids`` (every thread) limited to ``cores`` of CPU time per
    ``period_ms`` (cgroup v1 CFS quota in a child cgroup of its own); moved back and the
    cgroup removed after."""
    group = CPU_CGROUPS / f"overload-{os.getpid()}"
    group.mkdir()
    try:
        period = int(period_ms * 1000)
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(cores * period))))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for task in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CPU_CGROUPS / "cgroup.procs").write_text(task)
        group.rmdir()


def throttled(group: Path | None) -> dict[str, float]:
    """cpu.stat of ``group``: periods, throttled periods, throttled seconds."""
    if group is None:
        return {}
    fields = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
    return {
        "periods": float(fields.get("nr_periods", 0)),
        "throttled": float(fields.get("nr_throttled", 0)),
        "throttled_s": float(fields.get("throttled_time", 0)) / 1e9,
    }


def admitted_histogram(metrics_port: int) -> dict[float, float]:
    """Cumulative counts by bucket bound (seconds) of the API's
    ``http_request_duration_seconds`` for its 2xx answers (every route), from its
    ``/metrics``; empty without a metrics port or when it cannot be read. The key
    ``-1.0`` holds the requests the process itself shed (``http_requests_shed_total``)."""
    if not metrics_port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("http_requests_shed_total{"):
            buckets[SHED] = buckets.get(SHED, 0.0) + float(line.rpartition(" ")[2])
        if not line.startswith("http_request_duration_seconds_bucket{"):
            continue
        labels, _, value = line.rpartition(" ")
        if 'status="2' not in labels:
            continue
        bound = labels.split('le="', 1)[1].split('"', 1)[0]
        key = math.inf if bound == "+Inf" else float(bound)
        buckets[key] = buckets.get(key, 0.0) + float(value)
    return buckets


def histogram_view(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Count and p50/p99 bucket bounds (ms, "≤") of the samples between two readings
    (and ``shed_by_api``: what the process shed meanwhile, when known)."""
    if not after:
        return {}
    shed = after.get(SHED)
    delta = sorted(
        (bound, count - before.get(bound, 0.0)) for bound, count in after.items() if bound != SHED
    )
    total = delta[-1][1] if delta else 0.0
    out: dict[str, Any] = {"count": int(total)}
    if shed is not None:
        out["shed_by_api"] = int(shed - before.get(SHED, 0.0))
    for name, q in (("p50_ms_at_most", 0.5), ("p99_ms_at_most", 0.99)):
        bound = next((b for b, c in delta if c >= q * total), math.inf)
        out[name] = None if bound == math.inf or not total else round(bound * 1000, 1)
    return out


class Phase:
    """One phase on ``blaster``: its answers by status, the CPU of the API process
    ``pid`` (and its workers) and of this generator process, and the server's view of
    its admitted answers (``metrics_port``; 0: none)."""

    def __init__(
        self,
        pid: int,
        blaster: Blaster,
        metrics_port: int = 0,
        front_pid: int = 0,
        cgroup: Path | None = None,
    ) -> None:
        self.pid = pid
        self.blaster = blaster
        self.metrics_port = metrics_port
        self.front_pid = front_pid
        self.cgroup = cgroup
        self.histogram = admitted_histogram(metrics_port)
        blaster.reset()
        self.throttled = throttled(cgroup)
        self.cpu_started = self._cpu()

    def _cpu(self) -> tuple[float, float, float]:
        """CPU seconds of the API process (with its workers), of this generator and of
        the front proxy (0 without one)."""
        api = sum(s[1] for s in map(_stat, _family(self.pid)) if s is not None)
        generator = _stat(os.getpid())
        front = _stat(self.front_pid) if self.front_pid else None
        return (
            api,
            0.0 if generator is None else generator[1],
            0.0 if front is None else front[1],
        )

    def report(self, seconds: float) -> dict[str, Any]:
        (api, generator, front), (api_0, generator_0, front_0) = self._cpu(), self.cpu_started
        answers = sum(len(v) for v in self.blaster.latencies.values())
        view = histogram_view(self.histogram, admitted_histogram(self.metrics_port))
        out: dict[str, Any] = {
            "seconds": round(seconds, 1),
            "api_cpu_cores": round((api - api_0) / seconds, 2),
            "api_cpu_us_per_answer": round((api - api_0) / max(answers, 1) * 1e6, 1),
            "generator_cpu_cores": round((generator - generator_0) / seconds, 2),
            "generator_cpu_us_per_request": round(
                (generator - generator_0) / max(answers, 1) * 1e6, 1
            ),
        }
        for kind, values in sorted(self.blaster.latencies.items(), key=lambda kv: str(kv[0])):
            values.sort()
            server = sorted(self.blaster.server_latencies[kind])
            out[str(kind)] = {
                "count": len(values),
                "per_s": round(len(values) / seconds, 1),
                "p50_ms": round(percentile(values, 0.5) * 1000, 1),
                "p99_ms": round(percentile(values, 0.99) * 1000, 1),
                # from the write of the request (without the wait for a free connection)
                "server_p50_ms": round(percentile(server, 0.5) * 1000, 1),
                "server_p99_ms": round(percentile(server, 0.99) * 1000, 1),
            }
        if view:  # the API's own histogram: from the app's call to its return
            out["server_view_2xx"] = view
        if self.front_pid:
            out["front_cpu_cores"] = round((front - front_0) / seconds, 2)
        if self.cgroup is not None:  # the API's CPU quota: how often it was throttled
            now = throttled(self.cgroup)
            periods = now["periods"] - self.throttled["periods"]
            out["api_throttled_periods_share"] = round(
                (now["throttled"] - self.throttled["throttled"]) / max(periods, 1), 2
            )
        return out

    def ok_per_second(self, seconds: float) -> float:
        latencies = self.blaster.latencies
        return sum(len(v) for k, v in latencies.items() if 200 <= _int(k) < 300) / seconds


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` runs on ``cpus`` only (``sched_setaffinity`` sets
    one thread; the threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), cpus)


def _int(kind: int | str) -> int:
    return kind if isinstance(kind, int) else 0


async def phases(
    args: argparse.Namespace,
    port: int,
    requests: list[bytes],
    in_flight: int,
    pid: int,
    metrics_port: int = 0,
    front_pid: int = 0,
    cgroup: Path | None = None,
) -> dict[str, Any]:
    """Capacity, overload and recovery against the API on ``port`` (process ``pid``,
    ``/metrics`` on ``metrics_port``; ``port`` is the front proxy's, process
    ``front_pid``, when there is one; ``cgroup``: the API's CPU quota)."""
    if args.pin:
        for api_pid in _family(pid):
            pin(api_pid, {0})
        pin(os.getpid(), {1})
        if front_pid:  # the proxy refuses on the cores that do not serve
            pin(front_pid, {1})
    blaster = Blaster("127.0.0.1", port, requests, max_connections=args.connections)
    clients = min(args.concurrency, in_flight) if in_flight > 0 else args.concurrency
    capacity = Phase(pid, blaster, metrics_port, front_pid, cgroup)
    seconds = await blaster.closed_loop(clients, args.duration)
    capacity_report = capacity.report(seconds)
    cap = capacity.ok_per_second(seconds)
    rate = args.rate or cap * args.factor
    # the client's pool is open before the burst: measure shedding, not a connection storm
    await blaster.connect(args.connections)
    overload = Phase(pid, blaster, metrics_port, front_pid, cgroup)
    over_s = await blaster.open_loop(rate, args.duration)
    overload_report = overload.report(over_s)
    recovery = Phase(pid, blaster, metrics_port, front_pid, cgroup)
    rec_s = await blaster.open_loop(cap / 2, args.duration / 2)
    recovery_report = recovery.report(rec_s)
    blaster.close()
    admitted = overload_report.get("200") or overload_report.get("201")
    capacity_ok = capacity_report.get("200") or capacity_report.get("201")
    summary = {}
    if admitted and capacity_ok:
        summary["admitted_p99_over_capacity_p99"] = round(
            admitted["p99_ms"] / max(capacity_ok["p99_ms"], 0.1), 2
        )
    return {
        f"capacity ({clients} clients)": capacity_report,
        f"overload ({rate:.0f}/s offered)": overload_report,
        f"recovery ({cap / 2:.0f}/s offered)": recovery_report,
        **summary,
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
    latencies: dict[str, list[float]] = {}
    started = time.perf_counter()
    for _ in range(200):
        conn = Connection("127.0.0.1", port)  # a new client: a new connection each
        began = time.perf_counter()
        try:
            kind = str((await asyncio.wait_for(request(conn), 10))[0])
        except (HttpError, OSError, TimeoutError) as exc:
            kind = type(exc).__name__
        latencies.setdefault(kind, []).append(time.perf_counter() - began)
        conn.close()
    seconds = time.perf_counter() - started
    await asyncio.sleep(args.drip * 2)
    stop.set()
    await asyncio.gather(*drips, return_exceptions=True)
    return {
        "slow connections opened": opened,
        "closed by the server": closed_by_server,
        "200 new clients, one request each": {
            kind: {
                "count": len(values),
                "p50_ms": round(percentile(sorted(values), 0.5) * 1000, 1),
                "p99_ms": round(percentile(sorted(values), 0.99) * 1000, 1),
            }
            for kind, values in latencies.items()
        },
        "seconds": round(seconds, 1),
    }


def run(args: argparse.Namespace, in_flight: int) -> dict[str, Any]:
    lag = args.lag_target_ms
    lag_target = (
        {}
        if lag is None
        else {"command_admission_lag_target_ms": lag, "query_admission_lag_target_ms": lag}
    )
    workers = args.workers
    settings = bench_settings(workers, workers).replace(
        serving={
            # the server's view of the admitted answers (Phase): /metrics of the API
            f"{args.side}_metrics_port": free_port(),
            "command_max_requests_in_flight": in_flight,
            "query_max_requests_in_flight": in_flight,
            "request_read_timeout_seconds": args.read_timeout,
            "max_connections": args.max_connections,
            **lag_target,
        },
        # the riders offer far more often than a person would: measure the shedding,
        # not the per-rider offer rate limit (429)
        offers={"rate_limit": 1_000_000},
    )
    with running_stack(settings, STACKS[args.side]) as bench, contextlib.ExitStack() as extra:
        compare = None
        if args.compare_code is not None:  # the same API from the other checkout
            port = free_port()
            start = extra_query_api if args.side == "query" else extra_command_api
            metrics = free_port()
            other = settings.replace(serving={f"{args.side}_metrics_port": metrics})
            pid = extra.enter_context(start(other, port, workers, args.compare_code))
            compare = (port, pid, metrics)
        pid = bench.pids[f"{args.side}_api"]
        cgroup = None
        if args.api_cpu:  # the API under test (every worker) gets this share of a core
            cgroup = extra.enter_context(
                cpu_quota(_family(pid), args.api_cpu, args.api_cpu_period_ms)
            )
        front = None
        if args.front == "haproxy":  # the generator talks to HAProxy, HAProxy to the API
            serving = settings.serving
            maxconn = args.front_maxconn or min(args.concurrency, in_flight or args.concurrency)
            config = Front(
                query_front=f"127.0.0.1:{free_port()}",
                query_api=f"127.0.0.1:{serving.query_port}",
                query_maxconn=maxconn,
                command_front=f"127.0.0.1:{free_port()}",
                command_api=f"127.0.0.1:{serving.command_port}",
                command_maxconn=maxconn,
                retry_after=serving.retry_after_seconds,
                threads=args.front_threads,
            )
            proxy = extra.enter_context(running_haproxy(config))
            address = config.query_front if args.side == "query" else config.command_front
            front = (int(address.rpartition(":")[2]), proxy.pid, maxconn)
        return asyncio.run(measure(args, settings, pid, compare, front, cgroup))


async def measure(
    args: argparse.Namespace,
    settings: Settings,
    pid: int,
    compare: tuple[int, int, int] | None,
    front: tuple[int, int, int] | None = None,
    cgroup: Path | None = None,
) -> dict[str, Any]:
    """The phases against the API process ``pid`` (and ``compare``: another checkout's
    port, pid and metrics port), through ``front`` (the proxy's port, pid and per-server
    maxconn) when given; ``cgroup``: the API's CPU quota."""
    out: dict[str, Any] = {
        "max_requests_in_flight": settings.serving.command_max_requests_in_flight,
        "admission_lag_target_ms": getattr(
            settings.serving, f"{args.side}_admission_lag_target_ms"
        ),
        "request_read_timeout_seconds": settings.serving.request_read_timeout_seconds,
        "max_connections": settings.serving.max_connections,
        "api_processes": args.workers,
        "api_cpu_quota_cores": args.api_cpu or None,
        "front": args.front,
    }
    if front is not None:
        out["front_maxconn"] = front[2]
    metrics_port = getattr(settings.serving, f"{args.side}_metrics_port")
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
        requests = [
            f"GET /orders/{order} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
            for order, auth in reads
        ]

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
        requests = [
            (
                "POST /offers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{auth_line}\r\n"
            ).encode()
            + body
            for body, auth_line in offers
        ]

        def request(pool: Pool | Connection) -> Any:
            body, auth_line = random.choice(offers)
            return pool.request("POST", "/offers", body, auth_line)

    random.shuffle(requests)
    in_flight = settings.serving.command_max_requests_in_flight
    if front is not None:
        port = front[0]
    if compare is None:
        out.update(
            await phases(
                args,
                port,
                requests,
                in_flight,
                pid,
                metrics_port,
                front[1] if front is not None else 0,
                cgroup,
            )
        )
    else:  # this checkout and the other one, alternately, on the same stack
        runs = []
        apis = (("this", (port, pid, metrics_port)), (args.compare_code, compare))
        for _ in range(args.rounds):
            for code, (api_port, api_pid, api_metrics) in apis:
                result = await phases(args, api_port, requests, in_flight, api_pid, api_metrics)
                runs.append({"code": str(code), **result})
        out["runs"] = runs
    if args.slowloris:
        out["slowloris"] = await slowloris(args, port, request, pid)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=sorted(STACKS))
    parser.add_argument("--in-flight", type=int, action="append", default=None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=1, help="processes of the API under test (uvicorn workers)"
    )
    parser.add_argument("--connections", type=int, default=512)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--slowloris", type=int, default=0)
    parser.add_argument("--drip", type=float, default=5.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="overload phase: this rate, not factor x capacity"
    )
    parser.add_argument(
        "--compare-code",
        type=Path,
        default=None,
        help="another checkout: its API runs beside this one's, measured alternately",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --compare-code: A/B rounds")
    parser.add_argument(
        "--pin", action="store_true", help="the API on the first core, the generator on the second"
    )
    parser.add_argument(
        "--lag-target-ms",
        type=float,
        default=None,
        help="*_admission_lag_target_ms of both APIs (default: the settings' defaults)",
    )
    defaults = Settings().serving
    parser.add_argument("--read-timeout", type=float, default=defaults.request_read_timeout_seconds)
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument(
        "--front",
        choices=("none", "haproxy"),
        default="none",
        help="haproxy: deploy/haproxy.cfg in front of the API; the generator talks to it",
    )
    parser.add_argument(
        "--front-maxconn",
        type=int,
        default=0,
        help="HAProxy's maxconn for the API (default: the capacity phase's clients)",
    )
    parser.add_argument("--front-threads", type=int, default=1, help="HAProxy's threads")
    parser.add_argument(
        "--api-cpu",
        type=float,
        default=0.0,
        help="cores the API under test may use (cgroup v1 CPU quota; 0: no quota)",
    )
    parser.add_argument(
        "--api-cpu-period-ms",
        type=float,
        default=10.0,
        help="the quota's period: a throttled API waits up to this long",
    )
    args = parser.parse_args(argv)
    if args.front == "haproxy" and HAPROXY is None:
        parser.error(MISSING)
    if args.front != "none" and args.compare_code is not None:
        parser.error("--front measures this checkout only (no --compare-code)")
    if args.api_cpu and not (CPU_CGROUPS / "cgroup.procs").exists():
        parser.error(f"--api-cpu needs the cgroup v1 cpu controller at {CPU_CGROUPS}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.install()
    results = [run(args, n) for n in args.in_flight or [64]]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
