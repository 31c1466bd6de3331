"""``python -m tests.load.commits``: what one ride flow costs Postgres, exactly.

Starts the stack on a private database (as ``python -m tests.load`` does), runs
``--flows`` ride flows (offer → order → finish) with ``--concurrency`` riders at once,
waits until the projector has published every event, and prints per flow: the
database's commits and rollbacks and its row writes (``pg_stat_database``), the row
writes per table (``pg_stat_user_tables``, so it shows which step writes what), the WAL
it made: exactly, the records that touch this database's relations and the commit records
of their transactions (``pg_walinspect``; the database is private, so the role creates
the extension there), and the ``pg_current_wal_lsn`` delta (cluster-wide: other work on
the server adds to it), and the CPU of each process.

Everything the stack does in the window counts, the worker's polls and the projector's
wake-ups included: that is what a flow costs the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from shared.settings import Settings
from tests.load import scenarios
from tests.load.__main__ import STACK, set_stub_configs
from tests.load.bench import bench_settings, running_stack
from tests.load.harness import CLOCK_TICKS, CpuMeter, Recorder

_DB = """
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted
  FROM pg_stat_database WHERE datname = current_database()
"""
# WAL records since $1 (up to what is flushed): those touching the database $2's
# relations (block_ref reads "blkref #0: rel <tablespace>/<database>/<relation> ...") and
# every transaction record (commit/abort), with its xid
_FLUSHED = """
SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_flush_lsn() > $1::text::pg_lsn
"""
_WAL_CHUNK = """
SELECT coalesce(sum(record_length) FILTER (WHERE own), 0)::int8 AS own_bytes,
       coalesce(array_agg(DISTINCT xid::text) FILTER (WHERE own), '{}') AS own_xids,
       coalesce(array_agg(xid::text || ' ' || record_length)
                FILTER (WHERE resource_manager = 'Transaction'), '{}') AS commits
  FROM (SELECT xid, resource_manager, record_length,
               block_ref LIKE '%/' || $2 || '/%' AS own
          FROM pg_get_wal_records_info($1::text::pg_lsn, $3::text::pg_lsn)) r
"""


class WalReader:
    """This database's WAL bytes, read every half second with ``pg_walinspect`` from a
    side database (so its own work is not counted) before the server recycles the
    segments: its relations' records plus the commit records of their transactions."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._side = dsn + "_wal"
        self.own_bytes = 0
        self._xids: set[str] = set()
        self._commits: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        admin = await asyncpg.connect(self._dsn)
        dboid = await admin.fetchval(
            "SELECT oid::text FROM pg_database WHERE datname = current_database()"
        )
        side_name = self._side.rsplit("/", 1)[1]
        await admin.execute(f'CREATE DATABASE "{side_name}"')
        await admin.close()
        conn = await asyncpg.connect(self._side)
        try:
            await conn.execute("CREATE EXTENSION pg_walinspect")
            since = await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text")
            ready.set()
            while True:
                stopping = self._stop.is_set()
                until, moved = await conn.fetchrow(_FLUSHED, since) or ("", False)
                if moved:  # the function refuses a start at the end of the WAL
                    row = await conn.fetchrow(_WAL_CHUNK, since, dboid, until)
                    assert row is not None
                    since = until
                    self.own_bytes += row["own_bytes"]
                    self._xids.update(x for x in row["own_xids"] if x != "0")
                    for entry in row["commits"]:
                        xid, length = entry.split()
                        self._commits[xid] = self._commits.get(xid, 0) + int(length)
                if stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
        finally:
            await conn.close()
            admin = await asyncpg.connect(self._dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{side_name}" WITH (FORCE)')
            await admin.close()

    def stop(self) -> None:
        self._stop.set()

    def total(self) -> int:
        """Bytes of this database's records and of their transactions' commit records."""
        return self.own_bytes + sum(self._commits.get(x, 0) for x in self._xids)


_TABLES = """
SELECT coalesce(p.relname, t.relname) AS name,
       sum(t.n_tup_ins)::int8 AS ins, sum(t.n_tup_upd)::int8 AS upd,
       sum(t.n_tup_hot_upd)::int8 AS hot, sum(t.n_tup_del)::int8 AS del
  FROM pg_stat_user_tables t
  LEFT JOIN pg_inherits i ON i.inhrelid = t.relid
  LEFT JOIN pg_class p ON p.oid = i.inhparent
 GROUP BY 1
"""


def _backends_cpu(database: str) -> float:
    """CPU seconds of the Postgres backends serving ``database`` (their process titles
    name it), so other databases on a shared server do not count."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    # an idle backend reports its counters within 10 s (PGSTAT_IDLE_INTERVAL); the
    # worker's and projector's polls in that wait add ~0.02 commits per 1,000 flows
    await asyncio.sleep(11)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    db = dict(await conn.fetchrow(_DB) or {})
    tables = {row["name"]: dict(row) for row in await conn.fetch(_TABLES)}
    lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    return {"db": db, "tables": tables, "lsn": lsn}


async def _drained(conn: asyncpg.Connection) -> None:
    for _ in range(200):
        if not await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the projector did not publish every event")


async def measure(
    settings: Settings, pids: dict[str, int], flows: int, concurrency: int, z_bytes: int
) -> dict[str, Any]:
    await set_stub_configs(settings, free_ride_seconds=0)
    ctx = await scenarios.ride_context(
        settings, z_bytes, 0.0, lag_sample_every=0, riders=max(200, concurrency * 4)
    )
    await asyncio.gather(*(scenarios.ride(ctx) for _ in range(concurrency)))  # warm-up
    conn = await asyncpg.connect(settings.db.url)
    try:
        await _drained(conn)
        meter = CpuMeter({**pids, "load generator": os.getpid()})
        database = settings.db.url.rsplit("/", 1)[1]
        before, cpu_before = await _snapshot(conn), meter.sample()
        cpu_before["postgres (this db)"] = _backends_cpu(database)
        wal, wal_ready = WalReader(settings.db.url), asyncio.Event()
        wal_task = asyncio.ensure_future(wal.run(wal_ready))
        await wal_ready.wait()
        ctx.recorder = Recorder()
        started = time.perf_counter()
        remaining = flows

        async def rider() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await scenarios.ride(ctx)

        await asyncio.gather(*(rider() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        await _drained(conn)
        wal.stop()
        await wal_task
        cpu_after = meter.sample()
        cpu_after["postgres (this db)"] = _backends_cpu(database)
        after = await _snapshot(conn)
        own_wal = wal.total()
        all_wal = await conn.fetchval(
            "SELECT $2::text::pg_lsn - $1::text::pg_lsn", before["lsn"], after["lsn"]
        )
    finally:
        await conn.close()
        ctx.command.close()
        ctx.query.close()
    done = ctx.recorder.flows
    if ctx.recorder.errors or done != flows:
        raise RuntimeError(f"{done}/{flows} flows, errors {dict(ctx.recorder.errors)}")
    db = {k: (after["db"][k] - before["db"][k]) / done for k in before["db"]}
    tables = {}
    for name, row in after["tables"].items():
        old = before["tables"].get(name, {})
        delta = {k: (row[k] - old.get(k, 0)) / done for k in ("ins", "upd", "hot", "del")}
        if any(delta.values()):
            tables[name] = delta
    cpu = {
        name: (cpu_after[name] - cpu_before[name]) * 1000 / done
        for name in ("command_api", "projector", "worker", "postgres (this db)", "stubs")
        if name in cpu_after
    }
    return {
        "flows": done,
        "flows_per_s": done / seconds,
        "per_flow": db,
        "row_writes_per_flow": db["tup_inserted"] + db["tup_updated"] + db["tup_deleted"],
        "tables": tables,
        "wal_bytes_per_flow": int(own_wal) / done,
        "cluster_wal_bytes_per_flow": int(all_wal) / done,
        "cpu_ms_per_flow": cpu,
    }


def report(result: dict[str, Any]) -> None:
    per = result["per_flow"]
    print(f"== {result['flows']} flows, {result['flows_per_s']:.0f}/s (noisy box: ignore)")
    print(
        f"   commits/flow {per['xact_commit']:.2f}  rollbacks/flow {per['xact_rollback']:.2f}"
        f"  row writes/flow {result['row_writes_per_flow']:.2f}"
        f"  WAL bytes/flow {result['wal_bytes_per_flow']:.0f}"
        f" (cluster-wide {result['cluster_wal_bytes_per_flow']:.0f})"
    )
    print("   table                  ins    upd  (hot)    del   per flow")
    for name, row in sorted(result["tables"].items()):
        print(
            f"   {name:<20}{row['ins']:>6.2f} {row['upd']:>6.2f} ({row['hot']:>4.2f})"
            f" {row['del']:>6.2f}"
        )
    cpu = "  ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms_per_flow"].items())
    print(f"   CPU-ms/flow: {cpu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.commits", description=__doc__)
    parser.add_argument("--flows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--z", type=int, default=10_240, help="bytes of track per ride")
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args(argv)
    uvloop.install()
    settings = bench_settings(1, 1)
    with running_stack(settings, STACK) as bench:
        for _ in range(args.reps):
            report(asyncio.run(measure(settings, bench.pids, args.flows, args.concurrency, args.z)))
        if dead := bench.stack.dead():
            print(f"processes died during the run: {dead}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
