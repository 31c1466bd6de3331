"""The Postgres pool factory every process uses."""

from __future__ import annotations

import asyncio

import asyncpg


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: one round trip saved per checkout.

    Safe because no pooled connection keeps session state: no LISTEN (nothing listens
    since ADR 0027), no session advisory locks, no SET; an open
    transaction is still rolled back by the pool itself.
    """


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    connect_timeout: float,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    """A pool of ``min_size``..``max_size`` connections to ``dsn``.

    Opening a connection gives up after ``connect_timeout`` seconds (a Postgres that
    accepts and never answers is down within it, not after asyncpg's default 60 s; the
    setting ``db.connect_timeout_seconds``); each statement times out after
    ``command_timeout`` seconds. Raises what ``asyncpg.connect`` raises (``OSError``,
    ``TimeoutError``, ``asyncpg.PostgresError``) when the first ``min_size`` connections
    cannot be opened; callers turn these into 503 (shared.infra.outages).
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, grace_seconds: float = 5.0) -> None:
    """Close ``pool`` gracefully within ``grace_seconds``, else terminate it.

    A graceful close waits for Postgres to acknowledge each connection's end; when
    Postgres hangs (accepts and never answers), that wait times out and would raise
    into the process's shutdown. Then the connections are dropped without waiting
    (``Pool.terminate``). Raises nothing for a hung or gone server.
    """
    try:
        async with asyncio.timeout(grace_seconds):
            await pool.close()
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()
