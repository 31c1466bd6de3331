"""The migration runner against fresh databases: idempotent, safe when several
processes start at once, and leaves orders partitioned ahead of time."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from migrations import runner
from migrations.runner import SQL_DIR, migrate
from shared.settings import Settings
from tests import conftest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def fresh_db(run_id: str) -> AsyncIterator[Callable[[str], str]]:
    """Names fresh (not yet created) databases; drops all of them at the end."""
    made: list[str] = []

    def make(label: str) -> str:
        dsn = conftest.test_database_url(f"scooters_test_{run_id}_mig_{label}")
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        await conftest.drop_database(dsn)


async def schema_dump(dsn: str) -> dict[str, Any]:
    """Our schema as data: tables, columns, constraints, indexes, triggers, functions,
    extensions and pg_partman's config. Partitions are counted, not named (their names
    carry dates)."""
    conn = await asyncpg.connect(dsn)
    try:
        not_partition = (
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('public', 'archive') AND NOT c.relispartition"
        )
        columns = await conn.fetch(
            "SELECT table_schema, table_name, column_name, data_type, is_nullable,"
            " column_default, ordinal_position FROM information_schema.columns"
            " WHERE table_schema IN ('public', 'archive')"
            f" AND (table_schema || '.' || table_name)::regclass IN ({not_partition})"
            " ORDER BY 1, 2, ordinal_position"
        )
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def"
            f" FROM pg_constraint WHERE conrelid IN ({not_partition}) ORDER BY 1, 2"
        )
        indexes = await conn.fetch(
            "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def"
            f" FROM pg_index WHERE indrelid IN ({not_partition}) ORDER BY 1"
        )
        triggers = await conn.fetch(
            "SELECT tgrelid::regclass::text AS tbl, tgname, pg_get_triggerdef(oid) AS def"
            " FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
        )
        functions = await conn.fetch(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' ORDER BY 1, 2"
        )
        extensions = await conn.fetch("SELECT extname, extversion FROM pg_extension ORDER BY 1")
        partman = await conn.fetch(
            "SELECT parent_table, control, partition_interval::text AS interval, premake,"
            " retention, retention_schema, infinite_time_partitions"
            " FROM partman.part_config ORDER BY 1"
        )
        partitions = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.orders'::regclass"
        )
        migrations = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    return {
        name: [tuple(r.values()) for r in rows]
        for name, rows in {
            "columns": columns,
            "constraints": constraints,
            "indexes": indexes,
            "triggers": triggers,
            "functions": functions,
            "extensions": extensions,
            "partman": partman,
            "migrations": migrations,
        }.items()
    } | {"partitions": partitions}


async def migrate_before(
    settings: Settings, number: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Apply the migrations numbered below ``number`` (e.g. ``"0012"``) to
    ``settings.db.url``, as a database of the release before it; returns how many."""
    before = [p for p in sorted(runner.SQL_DIR.glob("*.sql")) if p.name[:4] < number]
    for path in before:
        shutil.copy(path, tmp_path / path.name)
    with monkeypatch.context() as patch:
        patch.setattr(runner, "SQL_DIR", tmp_path)
        applied = len(await runner.migrate(settings))
    assert applied == len(before)
    return applied


def all_migrations() -> list[str]:
    return sorted(p.name for p in SQL_DIR.glob("*.sql"))


async def test_second_run_applies_nothing(
    base_settings: Settings, fresh_db: Callable[[str], str]
) -> None:
    settings = base_settings.replace(db={"url": fresh_db("twice")})

    assert await migrate(settings) == all_migrations()
    first = await schema_dump(settings.db.url)
    assert await migrate(settings) == []
    assert await schema_dump(settings.db.url) == first
    assert [v for (v,) in first["migrations"]] == all_migrations()
    assert ("public.orders", "created_at", "1 day") in {r[:3] for r in first["partman"]}


async def test_orders_are_partitioned_ahead(database: str, base_settings: Settings) -> None:
    conn = await asyncpg.connect(database)
    try:
        missing = await conn.fetch(
            "SELECT d FROM generate_series(0, $1) AS d WHERE NOT (partman.show_partition_name("
            "'public.orders', (now() + make_interval(days => d))::text)).table_exists",
            base_settings.maintenance.partition_premake_days,
        )
        assert missing == []
        kind = await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = 'public.orders'::regclass"
        )
        assert kind == "p"
    finally:
        await conn.close()


async def test_concurrent_runs_all_succeed_with_one_schema(
    base_settings: Settings, fresh_db: Callable[[str], str]
) -> None:
    reference = base_settings.replace(db={"url": fresh_db("reference")})
    await migrate(reference)
    expected = await schema_dump(reference.db.url)

    target = fresh_db("concurrent")
    env = {**os.environ, "SCOOTERS_DATABASE_URL": target}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "migrations",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    settings = base_settings.replace(db={"url": target})
    in_process = [asyncio.create_task(migrate(settings)) for _ in range(2)]

    outputs = await asyncio.gather(*(p.communicate() for p in processes))
    applied_here = await asyncio.gather(*in_process)

    for proc, (out, _) in zip(processes, outputs, strict=True):
        assert proc.returncode == 0, out.decode()
    # Every file was applied exactly once, by whichever runner got there first.
    counts = [
        int(m.group(1))
        for out, _ in outputs
        if (m := re.search(rb"migrations: (\d+) applied", out))
    ]
    assert len(counts) == len(processes)
    assert sum(counts) + sum(len(a) for a in applied_here) == len(all_migrations())
    assert await schema_dump(target) == expected


async def test_0013_leaves_no_trigger_on_the_outbox(
    base_settings: Settings,
    fresh_db: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0013 drops the outbox's NOTIFY trigger and its function (ADR 0027); a fresh
    database ends up with the same schema as an upgraded one."""
    query = (
        "SELECT ARRAY[(SELECT count(*)::int FROM pg_trigger WHERE tgrelid = 'outbox'::regclass"
        " AND NOT tgisinternal), (to_regproc('outbox_notify') IS NOT NULL)::int]"
    )
    old = base_settings.replace(db={"url": fresh_db("notify")})
    await migrate_before(old, "0013", tmp_path, monkeypatch)
    conn = await asyncpg.connect(old.db.url)
    try:
        assert await conn.fetchval(query) == [1, 1]  # the release before
        assert await runner.migrate(old) == [n for n in all_migrations() if n[:4] >= "0013"]
        assert await conn.fetchval(query) == [0, 0]
    finally:
        await conn.close()
    fresh = base_settings.replace(db={"url": fresh_db("notify_fresh")})
    await migrate(fresh)
    assert await schema_dump(fresh.db.url) == await schema_dump(old.db.url)
