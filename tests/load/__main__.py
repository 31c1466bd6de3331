"""``python -m tests.load command|query [options]``: start the stack in benchmark
configuration, run one side's load test, print the results and write them as JSON.

Examples::

    python -m tests.load command --max --duration 30          # ride flows at max throughput
    python -m tests.load command --rate 250 --duration 30     # fixed arrival rate
    python -m tests.load query --x 20 --y 50 --duration 30    # views at X·Y per second + max
    python -m tests.load soak --x 40 --y 50 --ride-seconds 30 --duration 600
    python -m tests.load command --smoke                       # a few seconds, for CI
    python -m tests.load query --redis cluster --replica       # over a Redis Cluster (3+3
                                                               # nodes) and a Postgres
                                                               # primary + hot standby
    python -m tests.load command --max --redis own-unix --postgres-socket /var/run/postgresql
                                                               # Unix sockets (issue 13)
    python -m tests.load query --duration 10 --orders 1500 --riders 1600 --rounds 6 \
        --round-seconds 5                                      # issue 13's read figures

How the query side measures its ratios to the bare Litestar endpoint (the ceiling,
``tests/load/ceiling.py``, served like the query API):

1. **Single windows** (as before issue 13's i13reads, same fields): the ceiling, the
   query API at max, the ``--compare-workers`` query API at max, the ceiling again, each
   ``--duration`` long with the database's counters read around it; each max as a ratio
   to the mean of the two ceilings (``ratio_to_ceiling``) and by CPU per request
   (``cpu_ratio_to_ceiling``: the bare process's ms over the query API's).
2. **Interleaved rounds** (``--rounds``, ``--round-seconds``; report ``read rounds``):
   the same three at max in short windows, the order rotated each round, each ratio to
   its own round's bare window; printed per round and as the median with the lowest and
   highest, with the median CPU ms per request and cores of every process (the servers,
   the load generator, Redis, Postgres) in each kind of window, and the load average
   between rounds. A single window minutes away from its ceiling measures the box's
   drift as much as the code (a bare ceiling that rose by a fifth within one run on a
   quiet box); the median of adjacent windows does not. Quote the rounds' median.
3. The fixed rates (``--rate``, else ``--x`` x ``--y``).

Every seeded order is read once per query process before the first window, so each
rider's token has been verified in every process (steady state) before anything is
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import uvloop

from shared.settings import Settings
from shared.views import order_key
from tests.load import rounds as rounds_mod
from tests.load import scenarios
from tests.load.bench import (
    bench_settings,
    bench_stub_settings,
    ceiling_server,
    extra_query_api,
    running_stack,
)
from tests.load.harness import CpuMeter, print_report
from tests.load.service_logs import check_run, print_other_errors, print_verdict
from tests.ports import free_port

STACK = ("stubs", "command_api", "worker", "projector", "query_api")
OWN_ENGINES: dict[str, int] = {}  # engines started for the run: name -> pid


async def storage_per_order(settings: Settings, orders: list[str]) -> dict[str, Any]:
    """Database bytes per finished order and Redis bytes per order view."""
    conn = await asyncpg.connect(settings.db.url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, avg(pg_column_size(o.*))::int AS row_bytes"
            " FROM orders o WHERE status IN ('finished', 'cancelled')"
        )
        total = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'orders'::regclass"
        )
        all_orders = await conn.fetchval("SELECT count(*) FROM orders")
    finally:
        await conn.close()
    client = scenarios.redis_client(settings)
    sizes = []
    for order_id in orders[:200]:
        size = await client.memory_usage(order_key(settings.redis.key_prefix, order_id))
        if size:
            sizes.append(int(size))
    await client.aclose()
    return {
        "ended_orders": row["n"] if row else 0,
        "db_row_bytes_avg": row["row_bytes"] if row else None,
        "db_bytes_per_order_with_indexes": int(total / all_orders) if all_orders else None,
        "redis_bytes_per_view_avg": int(sum(sizes) / len(sizes)) if sizes else None,
    }


def meter_for(settings: Settings, roots: dict[str, int]) -> CpuMeter:
    """CPU of ``roots``, of the run's private database's backends (its Postgres CPU) and of
    the run's Redis server (every Redis server with ``--redis cluster``; none by name when
    the run has a Redis of its own, which is a root: ``redis (own)``)."""
    port = None if settings.redis.cluster else urlsplit(settings.redis.url).port or 6379
    meter = CpuMeter(
        roots, database=settings.db.url.rsplit("/", 1)[1].split("?", 1)[0], redis_port=port
    )
    if "redis (own)" in roots:
        meter.by_name = {"postgres": "postgres"}
    return meter


async def set_stub_configs(settings: Settings, **values: Any) -> None:
    from tests.load.client import Connection

    stubs = bench_stub_settings(settings)
    conn = Connection("127.0.0.1", stubs.port)
    auth = f"Authorization: Bearer {stubs.admin_token}\r\n"
    try:
        status, body = await conn.request(
            "POST", "/admin/configs", json.dumps(values).encode(), auth
        )
        if status != 200:
            raise RuntimeError(f"stubs refused the configs: {status} {body[:200]!r}")
    finally:
        conn.close()


async def run_command(
    args: argparse.Namespace, settings: Settings, pids: dict[str, int]
) -> list[dict[str, Any]]:
    meter = meter_for(settings, {**pids, "load generator": os.getpid()})
    # rides in a load test last well under the free threshold; charge them all the same
    await set_stub_configs(settings, free_ride_seconds=0)
    reports = []
    rates = args.rate or [None]
    for rate in rates:
        report = await scenarios.command_side(
            settings,
            meter,
            rate=rate,
            concurrency=args.concurrency,
            duration=args.duration,
            z_bytes=args.z,
            ride_seconds=args.ride_seconds,
            riders=args.riders,
        )
        print_report(f"command side, {report['offered']}", report)
        reports.append(report)
    storage = await storage_per_order(settings, [])
    print(f"\n== storage: {storage}")
    reports.append({"side": "storage", **storage})
    return reports


async def run_query(
    args: argparse.Namespace,
    settings: Settings,
    pids: dict[str, int],
    ceiling_pid: int,
    extra: tuple[int, int] | None,
) -> list[dict[str, Any]]:
    """Ceiling, query API at max, the extra query API (``--compare-workers``) at max,
    ceiling again, the interleaved rounds (``--rounds``), then the fixed rates. Each
    single max is given as a ratio to the mean of the two ceilings (the box's speed
    drifts during a run); each round's to its own bare window (:func:`read_rounds`)."""
    roots = {**pids, "ceiling": ceiling_pid, "load generator": os.getpid()}
    if extra is not None:
        roots["query_api x2"] = extra[1]
    meter = meter_for(settings, roots)
    await set_stub_configs(settings, free_ride_seconds=0)
    seeded = await scenarios.seed_orders(settings, args.orders, args.z)
    await asyncio.sleep(1.0)  # let the projector catch up before reading
    reports = []

    async def bare(label: str) -> dict[str, Any]:
        report = await scenarios.ceiling(
            meter,
            args.ceiling_port,
            concurrency=args.concurrency,
            duration=args.duration,
            generator=args.generator,
        )
        print_report(
            f"ceiling ({label}): bare Litestar endpoint, {args.ceiling_workers} process", report
        )
        reports.append(report)
        return report

    first = await bare("before")
    tops = []
    top = await scenarios.query_side(
        settings,
        meter,
        seeded,
        rate=None,
        concurrency=args.concurrency,
        duration=args.duration,
        warm_passes=1,
        generator=args.generator,
    )
    top["query_processes"] = args.query_workers
    tops.append(top)
    if extra is not None:
        more = await scenarios.query_side(
            settings,
            meter,
            seeded,
            rate=None,
            concurrency=args.concurrency,
            duration=args.duration,
            port=extra[0],
            warm_passes=2,
            generator=args.generator,
        )
        more["query_processes"] = args.compare_workers
        if args.compare_code:
            more["code"] = str(args.compare_code)
        tops.append(more)
    last = await bare("after")
    ceiling_rate = (first["flows_per_s"] + last["flows_per_s"]) / 2
    for top in tops:
        top["ceiling_per_s"] = round(ceiling_rate, 1)
        top["ratio_to_ceiling"] = round(top["flows_per_s"] / ceiling_rate, 3)
        # the same as CPU per request, robust when other jobs take the cores: the bare
        # process's CPU per request over the query API's (all its processes)
        bare_ms = (first["cpu_ms_per"]["ceiling"] + last["cpu_ms_per"]["ceiling"]) / 2
        ours_ms = top["cpu_ms_per"].get("query_api", 0) + top["cpu_ms_per"].get("query_api x2", 0)
        top["cpu_ratio_to_ceiling"] = round(bare_ms / ours_ms, 3) if ours_ms else None
        code = f", code {top['code']}" if "code" in top else ""
        print_report(f"query side, max throughput, {top['query_processes']} process(es){code}", top)
        reports.append(top)
    if args.rounds:
        reports.append(await read_rounds(args, settings, meter, seeded, extra))
    for rate in args.rate or [args.x * args.y]:
        fixed = await scenarios.query_side(
            settings, meter, seeded, rate=rate, concurrency=args.concurrency, duration=args.duration
        )
        print_report(f"query side, {fixed['offered']}", fixed)
        reports.append(fixed)
    storage = await storage_per_order(settings, seeded.orders["finished"])
    print(f"\n== storage: {storage}")
    reports.append({"side": "storage", **storage})
    return reports


async def read_rounds(
    args: argparse.Namespace,
    settings: Settings,
    meter: CpuMeter,
    seeded: scenarios.Seeded,
    extra: tuple[int, int] | None,
) -> dict[str, Any]:
    """``--rounds`` interleaved rounds of ``--round-seconds`` windows at maximum
    throughput: the bare endpoint, the query API (``--query-workers`` processes) and, with
    ``--compare-workers``, the second query API, in an order rotated each round
    (``tests.load.rounds``). Returns the ``read rounds`` report: each window, each round's
    ratios to its own bare window, and the medians with their spread."""
    loads = [os.getloadavg()]
    rounds: list[list[dict[str, Any]]] = []
    kinds = rounds_mod.KINDS if extra is not None else (rounds_mod.BARE, rounds_mod.ONE)
    for index in range(args.rounds):
        windows = []
        for kind in rounds_mod.round_order(index, kinds):
            if kind == rounds_mod.BARE:
                window = await scenarios.ceiling(
                    meter,
                    args.ceiling_port,
                    concurrency=args.concurrency,
                    duration=args.round_seconds,
                    generator=args.generator,
                )
            else:
                window = await scenarios.query_side(
                    settings,
                    meter,
                    seeded,
                    rate=None,
                    concurrency=args.concurrency,
                    duration=args.round_seconds,
                    port=extra[0] if kind == rounds_mod.TWO and extra is not None else None,
                    generator=args.generator,
                    pg_stats=False,
                )
            window["kind"] = kind
            windows.append(window)
        rounds.append(windows)
        loads.append(os.getloadavg())
    summary = rounds_mod.summarize(rounds)
    labels = {
        rounds_mod.BARE: f"bare ({args.ceiling_workers} process)",
        rounds_mod.ONE: f"query API ({args.query_workers} process(es))",
        rounds_mod.TWO: f"query API ({args.compare_workers} process(es)"
        + (f", code {args.compare_code}" if args.compare_code else "")
        + ")",
    }
    print(
        f"\n== read rounds: {args.rounds} x ({', '.join(kinds)}), {args.round_seconds} s "
        f"windows, order rotated; load average (1 min) {loads[0][0]:.2f} at the start, "
        f"{max(la[0] for la in loads):.2f} at most between rounds"
    )
    for line in rounds_mod.format_summary(summary, labels):
        print(line)
    print(f"   errors: {summary['errors'] or 'none'}")
    return {
        "side": "read rounds",
        "round_seconds": args.round_seconds,
        "labels": labels,
        "load_average": [[round(v, 2) for v in la] for la in loads],
        **summary,
        "windows": rounds,
    }


async def run_soak(
    args: argparse.Namespace, settings: Settings, pids: dict[str, int]
) -> list[dict[str, Any]]:
    meter = meter_for(settings, {**pids, "load generator": os.getpid()})
    report = await scenarios.soak(
        settings,
        meter,
        pids,
        rate=args.x,
        y=args.y,
        duration=args.duration,
        z_bytes=args.z,
        ride_seconds=args.ride_seconds,
        riders=args.riders,
        sample_every=max(1.0, args.duration / 10),
    )
    print_report(f"soak, {report['offered']}", report)
    print(f"   {'t (s)':>7}{'orders':>9}{'parts':>6}{'db MB':>9}{'redis MB':>10}  rss MB")
    start = report["memory"][0]["at"]
    for row in report["memory"]:
        print(
            f"   {row['at'] - start:>7.0f}{row['orders']:>9}{row['partitions']:>6}"
            f"{row['db_mb']:>9}{row['redis_used_mb']:>10}  {row['rss_mb']}"
        )
    storage = await storage_per_order(settings, [])
    print(f"\n== storage: {storage}")
    return [report, {"side": "storage", **storage}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "side",
        choices=["command", "query", "soak"],
        help="soak: rides at --x/s and their screens at X·Y/s together",
    )
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="fixed arrival rate (flows/s or views/s); repeat for several",
    )
    parser.add_argument("--max", action="store_true", help="maximum throughput (closed loop)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--x", type=float, default=20.0, help="orders per second (seed: 20)")
    parser.add_argument("--y", type=float, default=50.0, help="views per order (seed: 50)")
    parser.add_argument(
        "--z", type=int, default=10_240, help="bytes per stored order (seed: 10 KB)"
    )
    parser.add_argument("--ride-seconds", type=float, default=0.0)
    parser.add_argument("--orders", type=int, default=3_000, help="query side: orders to seed")
    parser.add_argument(
        "--riders",
        type=int,
        default=3_000,
        help="signed-in riders taking turns (tokens fetched before the measured window)",
    )
    parser.add_argument("--command-workers", type=int, default=1)
    parser.add_argument("--query-workers", type=int, default=1)
    parser.add_argument(
        "--ceiling-workers",
        type=int,
        default=1,
        help="query side: processes of the bare ceiling app (the ratios are to it)",
    )
    parser.add_argument(
        "--compare-workers",
        type=int,
        default=2,
        help="query side: also run a query API in this many processes at max (0: don't)",
    )
    parser.add_argument(
        "--compare-code",
        type=Path,
        help="query side: run the --compare-workers query API from this checkout of the "
        "project (e.g. main, unpacked with git archive), to compare versions in one run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="query side: after the single windows, this many interleaved rounds of "
        "bare / query API / --compare-workers query API windows at max, order rotated "
        "each round; each ratio is to its round's bare window, summarized as the median "
        "and spread (tests/load/rounds.py; 0: none)",
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=5.0,
        help="query side: length of each window of --rounds",
    )
    parser.add_argument(
        "--generator",
        choices=["loop", "pool"],
        default="loop",
        help="query side: how the max phases (ceiling and query APIs alike) are driven: "
        "loop, a callback per connection (the generator's least CPU per request), or pool, "
        "a closed loop of tasks through the HTTP client's Pool (before i13read)",
    )
    parser.add_argument(
        "--ceiling-port", type=int, default=0, help="port of the bare ceiling app (0: a free one)"
    )
    parser.add_argument(
        "--redis",
        choices=["single", "cluster", "own-tcp", "own-unix"],
        default="single",
        help="cluster: start a Redis Cluster of 3 masters + 3 replicas for the run; "
        "own-tcp / own-unix: start a Redis server of the run's own and reach it over TCP "
        "or its Unix socket (its CPU is reported as 'redis (own)')",
    )
    parser.add_argument(
        "--postgres-socket",
        metavar="DIR",
        default="",
        help="reach Postgres through its Unix socket in DIR (e.g. /var/run/postgresql), "
        "same server, role and password as SCOOTERS_DATABASE_URL",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="start a Postgres primary + hot standby for the run (the query side's "
        "fallback reads the standby)",
    )
    parser.add_argument(
        "--pg-set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a Postgres setting for the run's database (ALTER DATABASE ... SET), before "
        "the services connect; repeat for several (e.g. commit_delay=20)",
    )
    parser.add_argument(
        "--floor",
        choices=("litestar", "raw"),
        help="command side: serve the floor app of tests/load/floor.py as the command API "
        '(the ride commands and nothing else; issue 13, docs/benchmarks.md "i13floor")',
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds at a low rate (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="show the services' output")
    parser.add_argument(
        "--logs",
        type=Path,
        help="keep the services' logs here (default: a temporary file, kept and named "
        "only when the run fails); any 5xx answer but 503 fails the run and prints the "
        "exception each service logged",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.concurrency, args.orders, args.riders = 2.0, 4, 60, 100
        args.rounds, args.round_seconds = 1, 1.0
        args.rate = [10.0] if args.side == "command" else [50.0]
        args.x, args.y, args.ride_seconds = 5.0, 10.0, 0.5
    elif args.max and args.side == "command":
        args.rate = None
    if args.side == "soak" and args.redis == "cluster":
        parser.error("soak samples one Redis's memory: use --redis single")
    settings = bench_settings(args.command_workers, args.query_workers)
    args.ceiling_port = args.ceiling_port or free_port()
    uvloop.install()
    with contextlib.ExitStack() as engines:
        settings = start_engines(engines, settings, args.redis == "cluster", args.replica)
        settings = over_sockets(engines, settings, args.redis, args.postgres_socket)
        return run(args, settings)


def over_sockets(
    engines: contextlib.ExitStack, settings: Settings, redis: str, postgres_dir: str
) -> Settings:
    """Point ``settings`` at a Redis server of the run's own (``own-tcp``/``own-unix``)
    and/or at Postgres's Unix socket in ``postgres_dir`` (issue 13)."""
    from tests.engines import redis_server

    if redis in ("own-tcp", "own-unix"):
        server = engines.enter_context(redis_server())
        OWN_ENGINES["redis (own)"] = server.pid
        settings = settings.replace(redis={"url": server.url(unix=redis == "own-unix")})
        print(f"== Redis of the run's own: {settings.redis.url}")
    if postgres_dir:
        parts = urlsplit(settings.db.url)
        login = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        port = f":{parts.port}" if parts.port else ""
        socket_host = quote(postgres_dir, safe="")
        url = urlunsplit(parts._replace(netloc=f"{login}{socket_host}{port}"))
        settings = settings.replace(db={"url": url})
        print(f"== Postgres over its Unix socket in {postgres_dir}")
    return settings


def start_engines(
    engines: contextlib.ExitStack, settings: Settings, cluster: bool, replica: bool
) -> Settings:
    """Start the engines the run asked for (tests/engines.py) and point ``settings`` at
    them; they are stopped when ``engines`` closes."""
    from tests.engines import postgres_pair, redis_cluster

    if cluster:
        nodes = engines.enter_context(redis_cluster())
        settings = settings.replace(redis={"url": nodes.url, "cluster": True})
        print(f"== Redis Cluster: masters {nodes.masters()}, 1 replica each")
    if replica:
        pair = engines.enter_context(postgres_pair())
        name = settings.db.url.rsplit("/", 1)[1]
        settings = settings.replace(
            db={"url": pair.primary_dsn(name), "replica_url": pair.replica_dsn(name)}
        )
        print(f"== Postgres primary :{pair.primary_port}, hot standby :{pair.replica_port}")
    return settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the side, then the guard: a 5xx answer other than 503, or an unhandled error
    in the services' logs, fails the run (exit code 1) and prints each logged exception."""
    log_path = args.logs
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="scooters-load-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    code = 1
    try:
        code = _run(args, settings, log_path)
    finally:
        if args.logs is None and code == 0:
            log_path.unlink(missing_ok=True)
        else:
            print(f"== services' logs: {log_path}")
    return code


def _run(args: argparse.Namespace, settings: Settings, log_path: Path) -> int:
    if args.floor:  # the stack's command API is the floor app (tests/load/floor.py)
        import scripts.stack

        scripts.stack.MODULES["command_api"] = "tests.load.floor"
        os.environ["FLOOR_APP"] = args.floor  # the services' environment is ours
    pg_settings = [(name, value) for name, _, value in (p.partition("=") for p in args.pg_set)]
    with running_stack(
        settings, STACK, quiet=not args.verbose, log_path=log_path, pg_settings=pg_settings
    ) as bench:
        bench.pids.update(OWN_ENGINES)  # their CPU is measured as the processes' is
        if args.side == "command":
            reports = asyncio.run(run_command(args, settings, bench.pids))
        elif args.side == "soak":
            reports = asyncio.run(run_soak(args, settings, bench.pids))
        else:
            with contextlib.ExitStack() as servers:
                ceiling_pid = servers.enter_context(
                    ceiling_server(settings, args.ceiling_port, args.ceiling_workers)
                )
                extra = None
                if args.compare_workers:
                    port = free_port()
                    pid = servers.enter_context(
                        extra_query_api(settings, port, args.compare_workers, args.compare_code)
                    )
                    extra = (port, pid)
                reports = asyncio.run(run_query(args, settings, bench.pids, ceiling_pid, extra))
        dead = bench.stack.dead()
    verdict = check_run(reports, log_path)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "reports": reports,
        "guard": {
            "bad_answers": dict(verdict.bad_answers),
            "unhandled_errors": [
                {"service": e.service, **e.fields, "exception": e.exception} for e in verdict.errors
            ],
            "other_errors": dict(verdict.others),
        },
    }
    print_other_errors(verdict, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if verdict.failed:
        print_verdict(verdict, log_path, sys.stderr)
    if dead:
        print(f"processes died during the run: {dead} (logs: {log_path})", file=sys.stderr)
    if verdict.failed or dead:
        return 1
    errors = sum(sum(r.get("errors", {}).values()) for r in reports)
    return 1 if args.smoke and errors else 0


if __name__ == "__main__":
    sys.exit(main())
