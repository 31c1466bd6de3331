"""``python -m tests.load.group_commit``: WAL flushes and backend CPU per commit, by setting.

``--connections`` connections commit one-row inserts as fast as they can for
``--seconds``, into a plain table and into one whose ``AFTER INSERT ... FOR EACH
STATEMENT`` trigger calls ``pg_notify`` (as ``outbox_notify`` does on ``outbox``,
migration 0001), each with ``commit_delay`` 0 and ``--delay`` µs (``commit_siblings``
1), alternated ``--rounds`` times in a database of its own. Per variant: commits/s,
``fdatasync`` calls of those backends per commit (``perf stat`` on the
``syscalls:sys_enter_fdatasync`` tracepoint, so other databases' commits do not count),
the backends' CPU µs per commit (``/proc/<pid>/schedstat``), and commit latency p50/p99.
Needs ``perf`` and a superuser role (``commit_delay`` is superuser-only). i13pgconf.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import subprocess
import sys
import time

import asyncpg

from shared.settings import Settings
from tests.load.step_cost import backend_cpu_ns

_PERF = ("perf", "stat", "-x,", "-e", "syscalls:sys_enter_fdatasync")
_HEADER = "table     commit_delay  commits/s  fdatasync/commit  backend µs/commit  p50 ms  p99 ms"
_SCHEMA = """
CREATE TABLE plain (id bigserial PRIMARY KEY, v text);
CREATE TABLE notified (id bigserial PRIMARY KEY, v text);
CREATE FUNCTION notify_it() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER notify_it AFTER INSERT ON notified
    FOR EACH STATEMENT EXECUTE FUNCTION notify_it();
"""


async def one(
    dsn: str, table: str, delay: int, connections: int, seconds: float
) -> dict[str, float]:
    """One variant: commits/s, fdatasync per commit, CPU µs per commit, latency ms."""
    settings = {"commit_delay": str(delay), "commit_siblings": "1"}
    conns = [await asyncpg.connect(dsn, server_settings=settings) for _ in range(connections)]
    try:
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        insert = f"INSERT INTO {table} (v) VALUES ('{'x' * 200}')"
        for c in conns:
            await c.execute(insert)
        perf = subprocess.Popen(
            [*_PERF, "-p", ",".join(map(str, pids))],
            stderr=subprocess.PIPE,
            text=True,
        )
        await asyncio.sleep(0.5)
        cpu0 = sum(backend_cpu_ns(p) for p in pids)
        took: list[float] = []
        stop = time.perf_counter() + seconds

        async def loop(conn: asyncpg.Connection) -> None:
            while time.perf_counter() < stop:
                begun = time.perf_counter()
                await conn.execute(insert)
                took.append(time.perf_counter() - begun)

        await asyncio.gather(*(loop(c) for c in conns))
        cpu1 = sum(backend_cpu_ns(p) for p in pids)
        perf.send_signal(signal.SIGINT)
        _, err = perf.communicate()
    finally:
        for c in conns:
            await c.close()
    syncs = int(next(line for line in err.splitlines() if "fdatasync" in line).split(",")[0])
    took.sort()
    n = len(took)
    return {
        "commits_per_s": n / seconds,
        "syncs": syncs / n,
        "cpu_us": (cpu1 - cpu0) / 1000 / n,
        "p50_ms": took[n // 2] * 1000,
        "p99_ms": took[n * 99 // 100] * 1000,
    }


async def run(args: argparse.Namespace) -> None:
    base = Settings.from_env().db.url.rsplit("/", 1)[0]
    name = f"scooters_groupcommit_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(base + "/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(f"{base}/{name}")
        await conn.execute(_SCHEMA)
        await conn.close()
        print(_HEADER)
        for _ in range(args.rounds):
            for table in ("plain", "notified"):
                for delay in (0, args.delay):
                    r = await one(f"{base}/{name}", table, delay, args.connections, args.seconds)
                    print(
                        f"{table:<9} {delay:>12} {r['commits_per_s']:10.0f} {r['syncs']:17.2f}"
                        f" {r['cpu_us']:18.1f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}",
                        flush=True,
                    )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.group_commit", description=__doc__)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--delay", type=int, default=50, help="commit_delay (µs) to compare")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
