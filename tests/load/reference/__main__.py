"""``python -m tests.load.reference``: the seed's reference implementation against ours,
ride flows at maximum throughput, alternately, in one run (issue 13).

Starts the stubs (identity provider included) and the reference application
(``tests/load/reference/seed-app``: FastAPI + psycopg, ``--workers`` uvicorn processes,
its own database on the run's Postgres server, offers/orders partitioned by day and
``user_summary``), checks that a flow works on it (201 / 201 / 200, the charge at the
payments stub), then for each round and each ``--concurrency`` runs

- **reference**: the command phase of ``tests.load`` (the same ``scenarios.ride`` flow,
  ``Pool`` client, warm-up and ``closed_loop``) against the reference, CPU per process
  from ``CpuMeter`` (the uvicorn tree, its database's backends, the stubs, the
  generator), Postgres commits from ``pg_stat_database``;
- **ours**: ``python -m tests.load command --max`` with the same duration, concurrency,
  Z and riders (a fresh stack and database each time, as that benchmark always runs),

in alternating order (odd rounds reference first, even rounds ours first), and prints
both with the ratio of flows/s. The reference's packages live in a scratch virtualenv
under /tmp made with uv (never in the project's environment or uv.lock).

Examples::

    python -m tests.load.reference --duration 20 --rounds 2          # 8, 32 and 64 users
    python -m tests.load.reference --check                           # functional check only
    python -m tests.load.reference --concurrency 32 --only reference # the reference alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import msgspec
import uvloop

from scripts.stack import start_stack, wait_healthy
from shared.settings import Settings
from tests.load.__main__ import set_stub_configs
from tests.load.bench import bench_settings, bench_stub_settings, settings_env
from tests.load.client import Connection, Pool
from tests.load.harness import (
    PG_STATS_DELAY_SECONDS,
    CpuMeter,
    Recorder,
    closed_loop,
    cpu_ms_per,
    cpu_share,
    latency_table,
    pg_per,
    pg_sample,
)
from tests.load.scenarios import (
    RideContext,
    ride,
    riders_and_scooters,
    sign_in,
    track_for,
)
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
APP_DIR = Path(__file__).resolve().parent / "seed-app"
# what the reference runs on, pinned (latest on PyPI when it was written, 2026-12-01)
REQUIREMENTS = (
    "fastapi==0.165.0",
    "pydantic==2.13.4",
    "uvicorn[standard]==0.54.0",  # uvloop + httptools: its best simple configuration
    "psycopg[binary]==3.3.9",
    "psycopg-pool==3.3.3",
    "httpx==0.28.1",
    "pyjwt[crypto]==2.15.1",
)
REFERENCE_PROCESSES = ("reference", "postgres", "postgres background")
OUR_PROCESSES = (
    "command_api",
    "postgres",
    "postgres background",
    "projector",
    "redis",
    "query_api",
    "worker",
)
_json = msgspec.json.Encoder()


# --- the reference's environment, database and server -----------------------------------------


def find_uv() -> str:
    """The uv executable: on PATH, else the project's own (bin/_install puts it in .tools)."""
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        raise SystemExit("uv not found: run (source bin/_install && install_project) first")
    return found


def reference_python() -> Path:
    """The Python of a scratch virtualenv under /tmp with :data:`REQUIREMENTS`, made with
    uv on first use (named by a hash of the requirements, so a change makes a new one)."""
    digest = hashlib.sha256("\n".join((sys.version, *REQUIREMENTS)).encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"scooters-reference-{digest}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    uv = find_uv()
    building = venv.with_name(f"{venv.name}.{os.getpid()}")
    print(f"== making the reference's virtualenv {venv} (uv, PyPI)")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(building)], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(building / "bin" / "python"),
            *REQUIREMENTS,
        ],
        check=True,
    )
    try:
        building.rename(venv)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return python


def _server_dsn(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


async def create_database(dsn: str, name: str) -> None:
    """A fresh database ``name`` with the reference's schema and daily partitions of
    ``orders`` from yesterday to three days ahead (UTC)."""
    admin = await asyncpg.connect(_server_dsn(dsn, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_server_dsn(dsn, name))
    try:
        await conn.execute((APP_DIR / "migrations" / "001_init.sql").read_text())
        today = datetime.now(UTC).date()
        for offset in range(-1, 4):
            day = today + timedelta(days=offset)
            await conn.execute(
                f"CREATE TABLE orders_p{day:%Y%m%d} PARTITION OF orders"
                f" FOR VALUES FROM ('{day}') TO ('{day + timedelta(days=1)}')"
            )
    finally:
        await conn.close()


async def drop_database(dsn: str, name: str) -> None:
    admin = await asyncpg.connect(_server_dsn(dsn, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.contextmanager
def reference_server(
    settings: Settings, dsn: str, port: int, args: argparse.Namespace, log: IO[str]
) -> Iterator[int]:
    """The reference app on ``port`` (``args.workers`` uvicorn workers); yields the pid of
    uvicorn's main process (its workers are its children)."""
    python = reference_python()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": dsn,
        "EXTERNAL_BASE_URL": settings.external.base_url,
        "JWKS_URL": settings.external.base_url + "/.well-known/jwks.json",
        "AUTH_ISSUER": settings.identity.issuer,
        "AUTH_AUDIENCE": settings.identity.audience,
        "AUTH_CACHE": "1" if args.auth_cache else "0",
        "OFFER_SECRET": secrets.token_urlsafe(32),
        "DB_POOL_MAX": str(args.pool_size),
        # the server is shared: while ours runs, the idle reference keeps only its minimum
        "DB_POOL_MAX_IDLE_SECONDS": "10",
    }
    command = [
        str(python),
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(command, cwd=APP_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, 120)
        # uvicorn answers as soon as one worker is up: wait for every worker's first answer
        time.sleep(2.0)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- the functional check -----------------------------------------------------------------------


async def functional_check(settings: Settings, port: int) -> dict[str, Any]:
    """One ride on the reference as the load test makes it, and what payments recorded.

    Raises ``AssertionError`` unless: the offer is 201 with DOMAIN.md's zone-1 prices for
    user-1 on scooter-1 (24/min, unlock 45, deposit 300), the order 201, a second start
    of the same offer 409, no token 401, the finish 200 ``finished`` with a positive
    ``total_amount``, and the payments stub's ledger shows the deposit held and exactly
    ``total_amount`` charged.
    """
    auth = (await sign_in(settings, ["user-1"]))["user-1"]
    conn = Connection("127.0.0.1", port)
    stubs = bench_stub_settings(settings)
    ledger = Connection("127.0.0.1", stubs.port)
    try:
        status, body = await conn.request("POST", "/offers", _json.encode({"scooter_id": "x"}))
        assert status == 401, f"no token: {status} {body[:200]!r}"
        status, body = await conn.request(
            "POST", "/offers", _json.encode({"scooter_id": "scooter-1"}), auth
        )
        assert status == 201, f"offer: {status} {body[:300]!r}"
        offer = json.loads(body)
        prices = (offer["price_per_minute"], offer["price_unlock"], offer["deposit"])
        assert prices == (24, 45, 300), f"offer prices {prices}"
        start = _json.encode({"offer_token": offer["token"]})
        status, body = await conn.request("POST", "/orders", start, auth)
        assert status == 201, f"order: {status} {body[:300]!r}"
        order_id = json.loads(body)["id"]
        status, body = await conn.request("POST", "/orders", start, auth)
        assert status == 409, f"second start of one offer: {status} {body[:300]!r}"
        finish = _json.encode({"track": track_for(2_000)})
        status, body = await conn.request("POST", f"/orders/{order_id}/finish", finish, auth)
        assert status == 200, f"finish: {status} {body[:300]!r}"
        finished = json.loads(body)
        assert finished["status"] == "finished", finished
        assert finished["total_amount"], finished
        status, body = await ledger.request(
            "GET",
            f"/ledger?order_id={order_id}",
            None,
            f"Authorization: Bearer {stubs.admin_token}\r\n",
        )
        assert status == 200, f"ledger: {status} {body[:300]!r}"
        account = json.loads(body)
        assert account["held"] == 300, account
        assert account["charged"] == finished["total_amount"], (account, finished)
    finally:
        conn.close()
        ledger.close()
    return {
        "offer": 201,
        "order": 201,
        "finish": 200,
        "total_amount": finished["total_amount"],
        "held": account["held"],
        "charged": account["charged"],
        "distance_meters": finished["distance_meters"],
    }


# --- the phases -------------------------------------------------------------------------------


async def reference_phase(
    settings: Settings,
    meter: CpuMeter,
    dsn: str,
    port: int,
    riders: list[str],
    scooters: list[str],
    auth: dict[str, str],
    args: argparse.Namespace,
    concurrency: int,
) -> dict[str, Any]:
    """``tests.load.scenarios.command_side`` at maximum throughput, against the reference
    (no projection-lag probes: the reference has no query side)."""
    ctx = RideContext(
        settings=settings,
        command=Pool("127.0.0.1", port),
        query=Pool("127.0.0.1", port),  # unused: lag_sample_every=0
        riders=deque(riders),
        scooters=deque(scooters),
        finish_body=_json.encode({"track": track_for(args.z)}),
        ride_seconds=0.0,
        lag_sample_every=0,
        auth=auth,
    )
    await asyncio.gather(*(ride(ctx) for _ in range(min(50, concurrency))))  # warm-up
    ctx.recorder = Recorder()
    await asyncio.sleep(PG_STATS_DELAY_SECONDS)
    pg_before = await pg_sample(dsn)
    before = meter.sample()
    seconds = await closed_loop(concurrency, args.duration, lambda: ride(ctx))
    after = meter.sample()
    await asyncio.sleep(PG_STATS_DELAY_SECONDS)
    pg_after = await pg_sample(dsn)
    rec = ctx.recorder
    ctx.command.close()
    ctx.query.close()
    return {
        "stack": "reference",
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "flows": rec.flows,
        "flows_per_s": round(rec.flows / seconds, 1),
        "latency": latency_table(rec, seconds),
        "errors": dict(rec.errors),
        "cpu": cpu_share(before, after, seconds),
        "cpu_ms_per": cpu_ms_per(before, after, rec.flows),
        "postgres_per": pg_per(pg_before, pg_after, rec.flows),
    }


def our_phase(args: argparse.Namespace, concurrency: int, log: IO[str]) -> dict[str, Any]:
    """``python -m tests.load command --max`` (the main benchmark) with the same settings."""
    fd, name = tempfile.mkstemp(prefix="scooters-ours-", suffix=".json")
    os.close(fd)
    path = Path(name)
    command = [
        sys.executable,
        "-m",
        "tests.load",
        "command",
        "--max",
        "--duration",
        str(args.duration),
        "--concurrency",
        str(concurrency),
        "--z",
        str(args.z),
        "--riders",
        str(args.riders),
        "--json",
        str(path),
    ]
    log.flush()
    code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    try:
        result = json.loads(path.read_text()) if path.stat().st_size else {}
    finally:
        path.unlink(missing_ok=True)
    if not result:
        return {"stack": "ours", "concurrency": concurrency, "failed": code}
    report: dict[str, Any] = result["reports"][0]
    report.update(stack="ours", concurrency=concurrency, exit_code=code)
    return report


# --- reporting --------------------------------------------------------------------------------


def totals(report: dict[str, Any]) -> dict[str, float]:
    """CPU-ms per flow: the service (API processes, Postgres, Redis), + the stubs, and the
    whole machine (everything, the generator and other jobs included)."""
    per = report.get("cpu_ms_per", {})
    names = REFERENCE_PROCESSES if report["stack"] == "reference" else OUR_PROCESSES
    service = sum(per.get(name, 0.0) for name in names)
    return {
        "service": round(service, 2),
        "with_stubs": round(service + per.get("stubs", 0.0), 2),
        "machine": round(per.get("machine (all)", 0.0), 2),
    }


def print_phase(report: dict[str, Any]) -> None:
    if "failed" in report:
        print(f"\n== {report['stack']}, {report['concurrency']} users: FAILED ({report['failed']})")
        return
    per = report["cpu_ms_per"]
    print(
        f"\n== {report['stack']}, {report['concurrency']} users: {report['flows_per_s']} flows/s"
        f" ({report['flows']} in {report['seconds']} s), errors: {report['errors'] or 'none'}"
    )
    print(f"   cpu ms per flow: {per}")
    print(f"   totals: {totals(report)}")
    print(f"   postgres per flow: {report.get('postgres_per')}")
    for endpoint, row in report["latency"].items():
        print(f"   {endpoint:<26} p50 {row['p50_ms']:>8} ms  p99 {row['p99_ms']:>8} ms")


def print_summary(phases: list[dict[str, Any]]) -> None:
    print("\n== summary: CPU-ms per ride flow; ratio = ours / reference flows/s, same round")
    head = (
        f"   {'round':>5} {'users':>5} {'stack':<9} {'flows/s':>8} {'api':>7} {'postgres':>8}"
        f" {'pg bg':>6} {'proj':>6} {'redis':>6} {'q+w':>6} {'service':>8} {'+stubs':>7}"
        f" {'stubs':>6} {'gen':>6} {'commits':>7} {'errors':>6} {'ratio':>6}"
    )
    print(head)
    by_key = {(p["round"], p["concurrency"], p["stack"]): p for p in phases}
    for p in phases:
        if "failed" in p:
            print(f"   {p['round']:>5} {p['concurrency']:>5} {p['stack']:<9} failed")
            continue
        per, total = p["cpu_ms_per"], totals(p)
        api = per.get("reference", per.get("command_api", 0.0))
        other = by_key.get((p["round"], p["concurrency"], "reference"))
        ratio = ""
        if p["stack"] == "ours" and other and other.get("flows_per_s"):
            ratio = f"{p['flows_per_s'] / other['flows_per_s']:.2f}"
        errors = sum(p["errors"].values())
        print(
            f"   {p['round']:>5} {p['concurrency']:>5} {p['stack']:<9} {p['flows_per_s']:>8}"
            f" {api:>7.2f} {per.get('postgres', 0.0):>8.2f}"
            f" {per.get('postgres background', 0.0):>6.2f} {per.get('projector', 0.0):>6.2f}"
            f" {per.get('redis', 0.0):>6.2f}"
            f" {per.get('query_api', 0.0) + per.get('worker', 0.0):>6.2f}"
            f" {total['service']:>8.2f} {total['with_stubs']:>7.2f} {per.get('stubs', 0.0):>6.2f}"
            f" {per.get('load generator', 0.0):>6.2f}"
            f" {p.get('postgres_per', {}).get('commits', 0.0):>7.2f} {errors:>6} {ratio:>6}"
        )


# --- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load.reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--concurrency", type=int, action="append", help="default: 8, 32, 64")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--z", type=int, default=10_240, help="bytes per stored order")
    parser.add_argument("--riders", type=int, default=3_000)
    parser.add_argument("--workers", type=int, default=2, help="the reference's uvicorn workers")
    parser.add_argument(
        "--pool-size", type=int, default=8, help="the reference's connections per worker"
    )
    parser.add_argument(
        "--auth-cache",
        action="store_true",
        help="the reference remembers verified tokens (default: verifies every request)",
    )
    parser.add_argument("--only", choices=["reference", "ours"], help="run one stack only")
    parser.add_argument("--check", action="store_true", help="the functional check only")
    parser.add_argument("--json", type=Path, help="also write the phases here")
    parser.add_argument("--logs", type=Path, help="keep the reference's and ours' output here")
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or [8, 32, 64]
    uvloop.install()
    keep_logs = args.logs is not None
    if args.logs is None:
        fd, name = tempfile.mkstemp(prefix="scooters-reference-", suffix=".log")
        os.close(fd)
        args.logs = Path(name)
    code = 1
    try:
        code = run(args)
    finally:
        if keep_logs or code != 0:
            print(f"== output of the reference and of ours: {args.logs}")
        else:
            args.logs.unlink(missing_ok=True)
    return code


def run(args: argparse.Namespace) -> int:
    """Start the stubs and the reference, check a ride, run the phases; the exit code is
    1 if a process died, a phase failed or had errors, or ours' run failed its guard."""
    settings = bench_settings(1, 1)
    ref_db = f"scooters_refimpl_{secrets.token_hex(3)}"
    dsn = _server_dsn(settings.db.url, ref_db)
    reference_python()  # before anything starts: the first run installs
    with open(args.logs, "w") as log, contextlib.ExitStack() as running:
        stubs = start_stack(("stubs",), settings_env(settings), output=log)
        running.callback(stubs.stop)
        asyncio.run(create_database(settings.db.url, ref_db))
        running.callback(lambda: asyncio.run(drop_database(settings.db.url, ref_db)))
        # rides in a load test last well under the free threshold; charge them all the same
        asyncio.run(set_stub_configs(settings, free_ride_seconds=0))
        port = free_port()
        ref_pid = running.enter_context(reference_server(settings, dsn, port, args, log))
        check = asyncio.run(functional_check(settings, port))
        print(f"== functional check of the reference: {check}")
        if args.check:
            return 0
        phases = asyncio.run(
            run_phases(settings, dsn, ref_db, port, ref_pid, stubs.procs["stubs"].pid, args, log)
        )
        dead = stubs.dead()
    print_summary(phases)
    if args.json:
        args.json.write_text(json.dumps({"check": check, "phases": phases}, indent=2))
    if dead:
        print(f"processes died during the run: {dead}", file=sys.stderr)
    failed = any("failed" in p or p.get("exit_code") or p.get("errors") for p in phases)
    return 1 if dead or failed else 0


async def run_phases(
    settings: Settings,
    dsn: str,
    ref_db: str,
    port: int,
    ref_pid: int,
    stubs_pid: int,
    args: argparse.Namespace,
    log: IO[str],
) -> list[dict[str, Any]]:
    riders, scooters = riders_and_scooters(bench_stub_settings(settings), args.riders)
    auth = await sign_in(settings, list(riders))
    meter = CpuMeter(
        {"reference": ref_pid, "stubs": stubs_pid, "load generator": os.getpid()},
        by_name={"postgres": "postgres"},  # the reference uses no Redis
        database=ref_db,
    )
    phases: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for concurrency in args.concurrency:
            order = ["reference", "ours"] if round_no % 2 else ["ours", "reference"]
            if args.only:
                order = [args.only]
            for stack in order:
                print(f"\n-- round {round_no}, {concurrency} users: {stack}", flush=True)
                if stack == "reference":
                    report = await reference_phase(
                        settings,
                        meter,
                        dsn,
                        port,
                        list(riders),
                        list(scooters),
                        auth,
                        args,
                        concurrency,
                    )
                else:
                    report = await asyncio.to_thread(our_phase, args, concurrency, log)
                report["round"] = round_no
                report["at"] = datetime.now(UTC).strftime("%H:%M:%S")
                print_phase(report)
                phases.append(report)
    return phases


if __name__ == "__main__":
    sys.exit(main())
