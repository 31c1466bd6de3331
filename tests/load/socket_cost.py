"""``python -m tests.load.socket_cost``: CPU per round trip to Postgres and Redis over
TCP loopback vs a Unix socket, client and server side (issue 13).

Postgres: the server of ``SCOOTERS_DATABASE_URL``, reached over TCP and through its
socket directory (``--postgres-socket``, default /var/run/postgresql); one connection
each, ``--calls`` statements one after another (``SELECT $1::text`` with a 1 KB value,
about what a ride step sends and gets back). The server's CPU is its backend's (its pid
from ``pg_backend_pid()``, read in /proc). Redis: a server of its own
(tests.engines.redis_server) on a port and a socket, ``--calls`` SET+GET of 1 KB.
Rounds alternate; CPU time, not wall time, so a busy machine disturbs it less than a
throughput run. Prints µs per round trip: client, server, both.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
import uvloop

from shared.settings import Settings
from tests.engines import redis_server
from tests.load.harness import _stat

VALUE = "x" * 1024


def socket_dsn(dsn: str, directory: str) -> str:
    """``dsn`` with its host replaced by the Unix socket directory ``directory``."""
    parts = urlsplit(dsn)
    login = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{login}{quote(directory, safe='')}{port}"))


def _cpu(pid: int) -> float:
    stat = _stat(pid)
    assert stat is not None
    return stat[1]


async def postgres_round(dsn: str, calls: int) -> tuple[float, float]:
    """(client µs, server µs) per statement over one connection to ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        for _ in range(200):  # warm up: plan cache, buffers
            await conn.fetchval("SELECT $1::text", VALUE)
        server, client = _cpu(backend), time.process_time()
        for _ in range(calls):
            await conn.fetchval("SELECT $1::text", VALUE)
        client = time.process_time() - client
        server = _cpu(backend) - server
    finally:
        await conn.close()
    return client / calls * 1e6, server / calls * 1e6


async def redis_round(url: str, server_pid: int, calls: int) -> tuple[float, float]:
    """(client µs, server µs) per SET+GET pair to the Redis at ``url``."""
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(200):
            await client.set("k", VALUE)
            await client.get("k")
        server, used = _cpu(server_pid), time.process_time()
        for _ in range(calls):
            await client.set("k", VALUE)
            await client.get("k")
        used = time.process_time() - used
        server = _cpu(server_pid) - server
    finally:
        await client.aclose()
    return used / calls * 1e6, server / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.socket_cost")
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres-socket", default="/var/run/postgresql")
    args = parser.parse_args(argv)
    dsn = Settings.from_env().db.url
    results: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    with redis_server() as rs:
        for _ in range(args.rounds):
            for name, url in (
                ("postgres tcp", dsn),
                ("postgres unix", socket_dsn(dsn, args.postgres_socket)),
            ):
                results[name].append(uvloop.run(postgres_round(url, args.calls)))
            for name, unix in (("redis tcp", False), ("redis unix", True)):
                results[name].append(uvloop.run(redis_round(rs.url(unix), rs.pid, args.calls)))
    print(
        f"CPU µs per round trip ({args.calls} calls, {args.rounds} rounds alternating): "
        "client / server / both, median round"
    )
    for name, rounds in results.items():
        both = sorted(rounds, key=sum)
        client, server = both[len(both) // 2]
        print(
            f"  {name:<14} {client:7.1f} / {server:7.1f} / {client + server:7.1f}   "
            f"(all: {' '.join(f'{c + s:.1f}' for c, s in rounds)})"
        )


if __name__ == "__main__":
    main()
