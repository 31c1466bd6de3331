"""``python -m tests.load.commits``: what one ride flow costs Postgres, exactly.

Starts the stack on a private database (as ``python -m tests.load`` does), runs
``--flows`` ride flows (offer → order → finish) with ``--concurrency`` riders at once,
waits until the projector has published every event, and prints per flow: the
database's commits and rollbacks and its row writes (``pg_stat_database``), the row
writes per table (``pg_stat_user_tables``, so it shows which step writes what), the WAL
it made (``pg_current_wal_lsn`` delta: cluster-wide, so other work on the server adds
to it; quote it as indicative) and the CPU of each process.

Everything the stack does in the window counts, the worker's polls and the projector's
wake-ups included: that is what a flow costs the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import asyncpg
import uvloop

from shared.settings import Settings
from tests.load import scenarios
from tests.load.__main__ import STACK, set_stub_configs
from tests.load.bench import bench_settings, running_stack
from tests.load.harness import CpuMeter, Recorder

_DB = """
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted
  FROM pg_stat_database WHERE datname = current_database()
"""
_TABLES = """
SELECT coalesce(p.relname, t.relname) AS name,
       sum(t.n_tup_ins)::int8 AS ins, sum(t.n_tup_upd)::int8 AS upd,
       sum(t.n_tup_hot_upd)::int8 AS hot, sum(t.n_tup_del)::int8 AS del
  FROM pg_stat_user_tables t
  LEFT JOIN pg_inherits i ON i.inhrelid = t.relid
  LEFT JOIN pg_class p ON p.oid = i.inhparent
 GROUP BY 1
"""


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    # an idle backend reports its counters within 10 s (PGSTAT_IDLE_INTERVAL); the
    # worker's and projector's polls in that wait add ~0.02 commits per 1,000 flows
    await asyncio.sleep(11)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    db = dict(await conn.fetchrow(_DB) or {})
    tables = {row["name"]: dict(row) for row in await conn.fetch(_TABLES)}
    lsn = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    return {"db": db, "tables": tables, "wal": int(lsn)}


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
        before, cpu_before = await _snapshot(conn), meter.sample()
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
        cpu_after, after = meter.sample(), await _snapshot(conn)
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
        for name in ("command_api", "projector", "worker", "postgres", "redis", "stubs")
        if name in cpu_after
    }
    return {
        "flows": done,
        "flows_per_s": done / seconds,
        "per_flow": db,
        "row_writes_per_flow": db["tup_inserted"] + db["tup_updated"] + db["tup_deleted"],
        "tables": tables,
        "wal_bytes_per_flow": (after["wal"] - before["wal"]) / done,
        "cpu_ms_per_flow": cpu,
    }


def report(result: dict[str, Any]) -> None:
    per = result["per_flow"]
    print(f"== {result['flows']} flows, {result['flows_per_s']:.0f}/s (noisy box: ignore)")
    print(
        f"   commits/flow {per['xact_commit']:.2f}  rollbacks/flow {per['xact_rollback']:.2f}"
        f"  row writes/flow {result['row_writes_per_flow']:.2f}"
        f"  WAL bytes/flow ≈{result['wal_bytes_per_flow']:.0f} (cluster-wide)"
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
