"""The stack in benchmark configuration: its own database and key prefix, then cleanup."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast
from urllib.parse import urlsplit

import asyncpg

from migrations.runner import migrate
from scripts.stack import Stack, start_stack
from shared.settings import Settings
from stubs import StubSettings
from tests.load.service_logs import Tee
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Bench:
    settings: Settings
    env: dict[str, str]
    stack: Stack
    pids: dict[str, int]
    log_path: Path | None = None  # the services' output, when kept


def bench_settings(command_workers: int, query_workers: int) -> Settings:
    """Settings of one run: a private database and key prefix, quiet logs, free ports
    (so a run shares the machine with ``bin/up`` and other runs). The database server
    and Redis come from ``SCOOTERS_DATABASE_URL`` / ``SCOOTERS_REDIS_URL``."""
    run = secrets.token_hex(3)
    base = Settings.from_env()
    stubs_port = free_port()
    return base.replace(
        db={
            "url": base.db.url.rsplit("/", 1)[0] + f"/scooters_bench_{run}",
            "pool_max": max(base.db.pool_max, 20),
        },
        redis={"key_prefix": f"bench:{run}:"},
        runtime={"log_level": "WARNING"},
        serving={
            "command_workers": command_workers,
            "query_workers": query_workers,
            "command_port": free_port(),
            "query_port": free_port(),
            "command_metrics_port": 0,  # no scraper in a benchmark
            "query_metrics_port": 0,
            # throughput runs measure the box, not the shedding (tests.load.overload does)
            "command_max_requests_in_flight": 0,
            "query_max_requests_in_flight": 0,
        },
        read={"projector_metrics_port": free_port()},
        external={"base_url": f"http://127.0.0.1:{stubs_port}"},
    )


_ADMIN_TOKEN = secrets.token_urlsafe(16)  # the generator sets the stubs' configs with it


def bench_stub_settings(settings: Settings) -> StubSettings:
    """The stubs of a benchmark run: the data set of the environment, on the free port
    ``bench_settings`` chose for them (the port of ``settings.external.base_url``)."""
    port = urlsplit(settings.external.base_url).port
    assert port is not None
    return StubSettings.from_env().replace(port=port, admin_token=_ADMIN_TOKEN)


def settings_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), **bench_stub_settings(settings).to_env()}


async def _drop_database(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def set_database_settings(dsn: str, pg_settings: Sequence[tuple[str, str]]) -> None:
    """``ALTER DATABASE <dsn's database> SET name = value`` for each pair of
    ``pg_settings`` (every connection opened afterwards starts with them; superuser-only
    settings such as ``commit_delay`` need a superuser role, as bin/_install's is).
    Raises ``asyncpg.PostgresError`` for an unknown setting or a bad value."""
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn)
    try:
        for setting, value in pg_settings:
            await conn.execute(f'ALTER DATABASE "{name}" SET {setting} = {value}')
    finally:
        await conn.close()


@contextmanager
def running_stack(
    settings: Settings,
    names: tuple[str, ...],
    quiet: bool = True,
    log_path: Path | None = None,
    pg_settings: Sequence[tuple[str, str]] = (),
) -> Iterator[Bench]:
    """Migrate a fresh database, start ``names``, and clean everything up afterwards.

    ``pg_settings`` (name, value) are set on the run's database after the migrations,
    before any service connects (``--pg-set``, i13pgconf). The services' output (one line
    per log event, prefixed with the process's name) goes to ``log_path`` when given, and
    to the terminal unless ``quiet``; it is complete once the context has exited
    (``tests/load/service_logs.py`` reads it then).
    """
    asyncio.run(migrate(settings))
    if pg_settings:
        asyncio.run(set_database_settings(settings.db.url, pg_settings))
    env = settings_env(settings)
    # closed below
    log_file = open(log_path, "w") if log_path is not None else None  # noqa: SIM115
    sinks: list[IO[str]] = [] if log_file is None else [log_file]
    if not quiet:
        sinks.append(sys.stdout)
    if not sinks:
        sinks.append(open(os.devnull, "w"))  # noqa: SIM115 - closed below
    out = sinks[0] if len(sinks) == 1 else cast(IO[str], Tee(*sinks))
    stack = start_stack(names, env, output=out)
    try:
        yield Bench(settings, env, stack, {n: p.pid for n, p in stack.procs.items()}, log_path)
    finally:
        stack.stop()
        for sink in sinks:
            if sink is not sys.stdout:
                sink.close()
        asyncio.run(_drop_database(settings.db.url))
        if not settings.redis.cluster:  # a cluster of the run's own goes away with it
            subprocess.run(
                [sys.executable, "-c", _FORGET_KEYS, settings.redis.url, settings.redis.key_prefix],
                check=False,
            )


_FORGET_KEYS = """
import sys, redis
client = redis.Redis.from_url(sys.argv[1])
for key in client.scan_iter(match=sys.argv[2] + "*", count=1000):
    client.delete(key)
"""


@contextmanager
def ceiling_server(settings: Settings, port: int, workers: int = 1) -> Iterator[int]:
    """The bare Litestar ceiling app under the query API's server settings, in
    ``workers`` processes."""
    with _server(settings, ["tests.load.ceiling", str(port), str(workers)], port) as pid:
        yield pid


@contextmanager
def extra_query_api(
    settings: Settings, port: int, workers: int, code: Path | None = None
) -> Iterator[int]:
    """A second query API on ``port`` in ``workers`` processes, over the run's database
    and Redis (to compare several query processes with one in the same run; ``code``: run
    it from another checkout of the project, to compare versions in the same run)."""
    extra = settings.replace(serving={"query_port": port, "query_workers": workers})
    with _server(extra, ["query_api"], port, code) as pid:
        yield pid


@contextmanager
def extra_command_api(
    settings: Settings, port: int, workers: int, code: Path | None = None
) -> Iterator[int]:
    """A second command API on ``port``, as :func:`extra_query_api` for the query API."""
    extra = settings.replace(serving={"command_port": port, "command_workers": workers})
    with _server(extra, ["command_api"], port, code) as pid:
        yield pid


@contextmanager
def _server(
    settings: Settings, module_and_args: list[str], port: int, code: Path | None = None
) -> Iterator[int]:
    env = settings_env(settings)
    if code is not None:
        env["PYTHONPATH"] = str(code.resolve())
    proc = subprocess.Popen([sys.executable, "-m", *module_and_args], cwd=code or ROOT, env=env)
    try:
        from scripts.stack import wait_healthy

        wait_healthy(f"http://127.0.0.1:{port}/health/live", proc, 120)  # a busy box
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def py_spy_prefix(output: str | None, rate: int) -> list[str]:
    """The command line that runs a measuring process under py-spy (a dev dependency),
    sampling ``rate`` times a second into the raw profile ``output``; ``[]`` when
    ``output`` is None (no profile asked for). For ``measure_checkout``'s ``prefix``."""
    if output is None:
        return []
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    return [py_spy, "record", "-r", str(rate), "-f", "raw", "-o", output, "--"]


def measure_checkout(
    script: Path,
    seeded: Path,
    code_dir: str,
    env: dict[str, str],
    count: int,
    concurrency: int,
    prefix: Sequence[str] = (),
) -> dict[str, float]:
    """Run ``script --measure seeded`` on ``code_dir``'s code (its directory first on the
    path, as the A/B cost tools do: tests.load.command_cost, tests.load.read_cost) under
    ``env``, behind ``prefix`` (e.g. a profiler's command line); returns the last JSON line
    it prints. Raises ``SystemExit`` when the run fails, after printing its stderr's end."""
    out = subprocess.run(
        [
            *prefix,
            sys.executable,
            str(script),
            "--measure",
            str(seeded),
            "--count",
            str(count),
            "--concurrency",
            str(concurrency),
        ],
        env={**env, "PYTHONPATH": str(Path(code_dir).resolve())},
        cwd=code_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"measuring {code_dir} failed")
    row: dict[str, float] = json.loads(
        [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    )
    return row
