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
from stubs import StubSettings

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
            "command_port": 18000,
            "query_port": 18001,
        },
        external={"base_url": "http://127.0.0.1:13629"},
    )


def bench_stub_settings() -> StubSettings:
    """The stubs of a benchmark run: the data set of the environment, on their own port."""
    return StubSettings.from_env().replace(port=13629)


def settings_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), **bench_stub_settings().to_env()}


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
        asyncio.run(_drop_database(settings.db.url))
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
def ceiling_server(settings: Settings, port: int) -> Iterator[int]:
    """The bare Litestar ceiling app under the query API's server settings."""
    env = settings_env(settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.load.ceiling",
            str(port),
            str(settings.serving.query_workers),
        ],
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
