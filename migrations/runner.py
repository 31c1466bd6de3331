"""Applies ``migrations/sql/*.sql`` once each, in order.

Idempotent and safe when several processes start at once: the whole run holds a
Postgres advisory lock, and each file is applied in its own transaction together
with its row in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.infra.failures import explained_exit
from shared.settings import Settings, get_settings

SQL_DIR = Path(__file__).with_name("sql")
_LOCK_ID = 0x5C007E25  # advisory lock key: "scooters migrations"

log = logging.getLogger("migrations")

# A plain connection or one borrowed from a pool (the worker's).
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def ensure_database(dsn: str) -> None:
    """Create the database named in ``dsn`` if it does not exist yet."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Another process may create it first; the race shows as either error.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def migrate(settings: Settings | None = None) -> list[str]:
    """Apply pending migrations and the partition settings; returns the files applied."""
    settings = settings or get_settings()
    await ensure_database(settings.db.url)
    conn = await asyncpg.connect(settings.db.url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in sorted(SQL_DIR.glob("*.sql")):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", path.name
                    )
                applied.append(path.name)
                log.info("applied %s", path.name)
            await configure_partitions(conn, settings)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
    return applied


async def configure_partitions(conn: Connection, settings: Settings) -> None:
    """Push premake and hot-window retention from settings into pg_partman's config.

    Partitions older than the hot window are detached into the ``archive`` schema by
    pg_partman; archived tables past total retention are dropped by our worker.
    """
    await conn.execute(
        "UPDATE partman.part_config SET premake = $1, retention = $2,"
        " retention_schema = 'archive', retention_keep_table = true,"
        " infinite_time_partitions = true"
        " WHERE parent_table = 'public.orders'",
        settings.maintenance.partition_premake_days,
        f"{settings.maintenance.hot_days} days",
    )
    await conn.execute("SELECT partman.run_maintenance('public.orders')")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    settings = get_settings()
    with explained_exit("migrations", settings.db.url, settings.redis.url):
        applied = asyncio.run(migrate(settings))
    print(f"migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ""))


if __name__ == "__main__":
    main()
