"""The stack in benchmark configuration: its own database and key prefix, then cleanup."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from migrations.runner import migrate
from scripts.stack import Stack, start_stack
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Bench:
    settings: Settings
    env: dict[str, str]
    stack: Stack
    pids: dict[str, int]


def bench_settings(command_workers: int, query_workers: int) -> Settings:
    """Settings of one run: a private database and key prefix, quiet logs, own ports."""
    run = secrets.token_hex(3)
    base = Settings.from_env()
    return dataclasses.replace(
        base,
        database_url=base.database_url.rsplit("/", 1)[0] + f"/scooters_bench_{run}",
        redis_key_prefix=f"bench:{run}:",
        log_level="WARNING",
        command_workers=command_workers,
        query_workers=query_workers,
        stubs_port=13629,
        external_base_url="http://127.0.0.1:13629",
        command_port=18000,
        query_port=18001,
        db_pool_max=max(base.db_pool_max, 20),
        # throughput runs measure the box, not the shedding (tests.load.overload does)
        command_max_requests_in_flight=0,
        query_max_requests_in_flight=0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for f in dataclasses.fields(settings):
        env[f"SCOOTERS_{f.name.upper()}"] = str(getattr(settings, f.name))
    return env


async def _drop_database(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextmanager
def running_stack(
    settings: Settings, names: tuple[str, ...], quiet: bool = True
) -> Iterator[Bench]:
    """Migrate a fresh database, start ``names``, and clean everything up afterwards."""
    asyncio.run(migrate(settings))
    env = settings_env(settings)
    out = open(os.devnull, "w") if quiet else None  # noqa: SIM115 - closed below
    stack = start_stack(names, env, output=out)
    try:
        yield Bench(settings, env, stack, {n: p.pid for n, p in stack.procs.items()})
    finally:
        stack.stop()
        if out is not None:
            out.close()
        asyncio.run(_drop_database(settings.database_url))
        subprocess.run(
            [sys.executable, "-c", _FORGET_KEYS, settings.redis_url, settings.redis_key_prefix],
            check=False,
        )


_FORGET_KEYS = """
import sys, redis
client = redis.Redis.from_url(sys.argv[1])
for key in client.scan_iter(match=sys.argv[2] + "*", count=1000):
    client.delete(key)
"""


@contextmanager
def ceiling_server(settings: Settings, port: int) -> Iterator[int]:
    """The bare Litestar ceiling app under the query API's server settings."""
    env = settings_env(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.load.ceiling", str(port), str(settings.query_workers)],
        cwd=ROOT,
        env=env,
    )
    try:
        from scripts.stack import wait_healthy

        wait_healthy(f"http://127.0.0.1:{port}/health/live", proc, 30)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
