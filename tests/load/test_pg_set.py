"""``--pg-set`` (tests/load/bench.py): a run's database carries the settings asked for."""

from __future__ import annotations

import secrets

import asyncpg

from tests.conftest import ADMIN_DSN, drop_database
from tests.load.bench import set_database_settings


async def test_new_connections_to_the_database_carry_the_settings() -> None:
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/scooters_test_pgset_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{dsn.rsplit("/", 1)[1]}"')
    finally:
        await admin.close()
    try:
        await set_database_settings(dsn, [("commit_delay", "20"), ("commit_siblings", "2")])
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SHOW commit_delay") == "20"
            assert await conn.fetchval("SHOW commit_siblings") == "2"
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)
