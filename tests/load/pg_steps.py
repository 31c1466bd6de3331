"""``python -m tests.load.pg_steps``: what the ride steps cost Postgres alone.

No HTTP, no stubs, no Redis: ``--flows`` ride flows are run straight through
``command_api.repository`` (the offer's debt read unless ``--no-debt-read``, start,
activate, finish with a ``--z``-byte track on the activation's terms, settle) by
``--concurrency`` riders at once, with a projector's claim-and-mark transaction every
``--projector-interval`` seconds (the SQL of ``query_api.projector``, no Redis). Prints
per flow: commits, row writes, this database's WAL (``pg_walinspect``, as
``tests.load.commits``) and the CPU of this database's backends, which is what a change
to the SQL or the schema moves, measured without the noise of the rest of the stack.

``--compare-upto 0009`` also migrates a second database with only the migrations up to
that one (the schema and functions before this branch's) and alternates the two, ``--reps``
times each, so both are measured in the same minutes on a shared box. Up to 0010 the
base runs activate, finish and settle as the 0004/0009 functions (``legacy_steps``), as
the command side did before 0011. ``--parent`` adds a third run on the full schema with
every step sent to ``orders`` instead of the order's partition (ADR 0017).
``--set LABEL:NAME=VALUE[,...]`` adds a run on the full schema in a database with those
settings (``ALTER DATABASE ... SET``, e.g. ``commit_delay``), alternated with the others
(i13pgconf); each run also prints the flows' latency p50/p99 (the four or five steps
back to back) and the server's WAL syncs per flow (``pg_stat_wal``: every database's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import uvloop

from command_api import repository as repo
from migrations import runner
from query_api.projector import _CLAIM, _MARK
from shared.domain import NewOrder, Order
from shared.ids import created_at_of, uuid7
from shared.infra.db import create_pool
from shared.lifecycle import (
    ACTIVATE,
    NEW_ORDER,
    FinishDecision,
    SettleDecision,
    decide_finish,
    decide_settle,
)
from shared.settings import Settings
from tests.load.bench import set_database_settings
from tests.load.commits import _DB, _TABLES, WalReader, _backends_cpu
from tests.load.scenarios import track_for
from tests.vectors import DOMAIN_PRICING

_json_track: str = ""


async def migrate_upto(settings: Settings, last: str | None) -> None:
    """Migrate ``settings.db.url`` with the files up to ``last`` (``0009``), or all."""
    if last is None:
        await runner.migrate(settings)
        return
    await runner.ensure_database(settings.db.url)
    conn = await asyncpg.connect(settings.db.url)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in sorted(runner.SQL_DIR.glob("*.sql")):
            if path.name[:4] > last:
                break
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", path.name)
        await runner.configure_partitions(conn, settings)
    finally:
        await conn.close()


def new_order(user_id: str, scooter_id: str) -> NewOrder:
    order_id = uuid7()
    created_at = created_at_of(order_id)
    status, payment_status = NEW_ORDER
    return NewOrder(
        id=str(order_id),
        offer_id=str(uuid.uuid4()),
        user_id=user_id,
        scooter_id=scooter_id,
        zone_id="zone-1",
        status=status,
        payment_status=payment_status,
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        free_ride_seconds=0,
        created_at=created_at,
        started_at=created_at,
        version=1,
        pricing=DOMAIN_PRICING,
    )


class LegacySteps:
    """activate, finish and settle as the command side called them before migration 0011:
    the PL/pgSQL functions of 0004 and 0009, each updating ``orders`` itself."""

    @staticmethod
    async def activate_ride(
        conn: asyncpg.Connection, order_id: uuid.UUID, created_at: datetime, started_at: datetime
    ) -> Order | None:
        text = await conn.fetchval(
            "SELECT to_jsonb(activate_ride($1, $2, $3, $4, $5, $6))::text",
            order_id,
            created_at,
            started_at,
            ACTIVATE.status_from,
            ACTIVATE.status_to,
            ACTIVATE.payment_to,
        )
        return None if text is None else _order.decode(text)

    @staticmethod
    async def finish_ride(
        conn: asyncpg.Connection,
        order_id: uuid.UUID,
        created_at: datetime,
        decision: FinishDecision,
        distance_meters: int,
        track: str | None,
        charge_due_seconds: float,
        terms: Order,
    ) -> Order | None:
        step = decision.transition
        text = await conn.fetchval(
            "SELECT to_jsonb(finish_ride($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
            " $13, $14, $15, $16))::text",
            order_id,
            created_at,
            step.status_from,
            step.status_to,
            step.payment_to,
            decision.finished_at,
            decision.duration_seconds,
            decision.total_amount,
            distance_meters,
            track,
            decision.rides_count_delta,
            charge_due_seconds,
            terms.started_at,
            terms.price_per_minute,
            terms.price_unlock,
            terms.free_ride_seconds,
        )
        return None if text is None else _order.decode(text)

    @staticmethod
    async def settle_charge(
        conn: asyncpg.Connection, order_id: uuid.UUID, created_at: datetime, d: SettleDecision
    ) -> Order | None:
        text = await conn.fetchval(
            "SELECT to_jsonb(settle_charge($1, $2, $3, $4, $5, $6, $7))::text",
            order_id,
            created_at,
            d.payment_from,
            d.payment_to,
            d.operation_state,
            d.total_charged_delta,
            d.debt_delta,
        )
        return None if text is None else _order.decode(text)


_order = msgspec.json.Decoder(Order)
_steps: Any = repo  # LegacySteps for a base schema before 0011


async def flow(pool: asyncpg.Pool, rider: str, scooter: str, debt_read: bool) -> None:
    """One ride's Postgres steps, each its own pool checkout as in ``command_api.rides``."""
    if debt_read:
        async with pool.acquire() as conn:
            await repo.recorded_debt(conn, rider)
    order = new_order(rider, scooter)
    async with pool.acquire() as conn:
        await repo.start_ride(conn, order, order.created_at + timedelta(minutes=5), 1, 60.0)
    order_id = uuid.UUID(order.id)
    async with pool.acquire() as conn:
        started = await _steps.activate_ride(conn, order_id, order.created_at, datetime.now(UTC))
    assert started is not None
    decision = decide_finish(
        started_at=started.started_at,
        finished_at=datetime.now(UTC),
        price_per_minute=started.price_per_minute,
        price_unlock=started.price_unlock,
        free_ride_seconds=started.free_ride_seconds,
        max_cost=10**9,
        max_charged_seconds=10**9,
    )
    async with pool.acquire() as conn:
        ended: Order | None = await _steps.finish_ride(
            conn, order_id, order.created_at, decision, 1234, _json_track, 4.0, started
        )
    assert ended is not None
    settled = await _settle(pool, order_id, order.created_at, decision.total_amount)
    assert settled is not None


async def _settle(
    pool: asyncpg.Pool, order_id: uuid.UUID, created_at: datetime, total: int
) -> Order | None:
    async with pool.acquire() as conn:
        settled: Order | None = await _steps.settle_charge(
            conn, order_id, created_at, decide_settle(total)
        )
        return settled


async def projector(pool: asyncpg.Pool, interval: float, stop: asyncio.Event) -> int:
    """Claim and mark every ``interval`` seconds, as ``query_api.projector`` does."""
    wakes = 0
    while True:
        stopping = stop.is_set()
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, 500)
            if rows:
                await conn.fetchval(_MARK, [r["id"] for r in rows])
                wakes += 1
        if stopping and not rows:
            return wakes
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def _wal_reader(dsn: str) -> tuple[WalReader, asyncio.Future[None]]:
    """A running ``WalReader``; its side database is retried while another session is
    in template1 (CREATE DATABASE then refuses)."""
    for attempt in range(10):
        wal, ready = WalReader(dsn), asyncio.Event()
        task = asyncio.ensure_future(wal.run(ready))
        waiting = asyncio.ensure_future(ready.wait())
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            return wal, task
        waiting.cancel()
        if attempt == 9:
            task.result()  # raises why the WAL reader could not start
        await asyncio.sleep(1)
    raise AssertionError("unreachable")


_SYNCS = "SELECT wal_sync, wal_write FROM pg_stat_wal"


async def measure(
    dsn: str, flows: int, concurrency: int, debt_read: bool, interval: float
) -> dict[str, Any]:
    database = dsn.rsplit("/", 1)[1]
    pool = await create_pool(
        dsn, min_size=concurrency + 1, max_size=concurrency + 1, connect_timeout=10.0
    )
    stats = await asyncpg.connect(dsn)
    try:
        riders = [f"rider-{secrets.token_hex(4)}" for _ in range(concurrency * 4)]
        todo = list(range(flows))
        took: list[float] = []

        async def rider(n: int) -> None:
            while todo:
                todo.pop()
                begun = time.perf_counter()
                await flow(pool, riders[n], f"scooter-{riders[n]}", debt_read)
                took.append(time.perf_counter() - begun)
                riders[n], riders[n + concurrency] = riders[n + concurrency], riders[n]

        stop = asyncio.Event()
        warm = asyncio.ensure_future(projector(pool, interval, stop))
        await asyncio.gather(*(flow(pool, r, f"s-{r}", debt_read) for r in riders))  # warm-up
        stop.set()
        await warm
        await asyncio.sleep(11)  # idle backends report their counters
        await stats.execute("SELECT pg_stat_clear_snapshot()")
        db0, tables0 = await stats.fetchrow(_DB), await stats.fetch(_TABLES)
        syncs0 = await stats.fetchrow(_SYNCS)
        cpu0 = _backends_cpu(database)
        wal, wal_task = await _wal_reader(dsn)
        stop = asyncio.Event()
        proj = asyncio.ensure_future(projector(pool, interval, stop))
        started = time.perf_counter()
        await asyncio.gather(*(rider(n) for n in range(concurrency)))
        seconds = time.perf_counter() - started
        stop.set()
        wakes = await proj
        cpu1 = _backends_cpu(database)
        syncs1 = await stats.fetchrow(_SYNCS)
        wal.stop()
        await wal_task
        await asyncio.sleep(11)
        await stats.execute("SELECT pg_stat_clear_snapshot()")
        db1, tables1 = await stats.fetchrow(_DB), await stats.fetch(_TABLES)
    finally:
        await stats.close()
        await pool.close()
    assert db0 is not None
    assert db1 is not None
    assert syncs0 is not None
    assert syncs1 is not None
    took.sort()
    per = {k: (db1[k] - db0[k]) / flows for k in dict(db0)}
    before = {r["name"]: r for r in tables0}
    tables = {}
    for row in tables1:
        old = before.get(row["name"])
        delta = {k: (row[k] - (old[k] if old else 0)) / flows for k in ("ins", "upd", "hot", "del")}
        if any(delta.values()):
            tables[row["name"]] = delta
    return {
        "flows_per_s": flows / seconds,
        "commits": per["xact_commit"],
        "rollbacks": per["xact_rollback"],
        "row_writes": per["tup_inserted"] + per["tup_updated"] + per["tup_deleted"],
        "wal_bytes": wal.total() / flows,
        "pg_cpu_ms": (cpu1 - cpu0) * 1000 / flows,
        "projector_wakes": wakes / flows,
        # the whole server's WAL syncs (pg_stat_wal): other databases' commits count too
        "wal_syncs": (syncs1["wal_sync"] - syncs0["wal_sync"]) / flows,
        "flow_p50_ms": took[len(took) // 2] * 1000,
        "flow_p99_ms": took[min(len(took) - 1, len(took) * 99 // 100)] * 1000,
        "tables": tables,
    }


def show(label: str, r: dict[str, Any]) -> None:
    print(
        f"{label:<6} {r['flows_per_s']:7.0f}/s  commits {r['commits']:.2f}"
        f" (projector {r['projector_wakes']:.2f})  row writes {r['row_writes']:.2f}"
        f"  WAL {r['wal_bytes']:7.0f} B  Postgres CPU {r['pg_cpu_ms']:.3f} ms/flow"
        f"  WAL syncs {r['wal_syncs']:.2f} (server)  flow p50 {r['flow_p50_ms']:.1f} ms"
        f" p99 {r['flow_p99_ms']:.1f} ms"
    )
    for name, row in sorted(r["tables"].items()):
        print(
            f"         {name:<20}{row['ins']:>6.2f} {row['upd']:>6.2f} ({row['hot']:>4.2f})"
            f" {row['del']:>6.2f}"
        )


async def _drop(dsn: str) -> None:
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    global _json_track, _steps
    _json_track = repo.encode_json(track_for(args.z)) if args.z else ""
    base = Settings.from_env()
    tag = secrets.token_hex(3)
    variants: dict[str, str | None] = {"new": None}
    if args.compare_upto:
        variants = {"base": args.compare_upto, "new": None}
    if args.parent:
        variants["parent"] = None
    database_settings: dict[str, list[tuple[str, str]]] = {}
    for spec in args.set:
        label, _, pairs = spec.partition(":")
        variants[label] = None
        database_settings[label] = [
            (name, value) for name, _, value in (p.partition("=") for p in pairs.split(","))
        ]
    dsns = {}
    try:
        for label, last in variants.items():
            dsn = base.db.url.rsplit("/", 1)[0] + f"/scooters_pgsteps_{tag}_{label}"
            dsns[label] = dsn
            await migrate_upto(
                base.replace(db={"url": dsn}, maintenance={"partition_premake_days": args.premake}),
                last,
            )
            if database_settings.get(label):
                await set_database_settings(dsn, database_settings[label])
        for _ in range(args.reps):
            for label, dsn in dsns.items():
                legacy = label == "base" and str(args.compare_upto) < "0011"
                _steps = LegacySteps if legacy else repo
                repo.DIRECT_PARTITIONS = label != "parent"
                r = await measure(
                    dsn, args.flows, args.concurrency, not args.no_debt_read, args.interval
                )
                show(label, r)
    finally:
        for dsn in dsns.values():
            await _drop(dsn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.pg_steps", description=__doc__)
    parser.add_argument("--flows", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--z", type=int, default=10_240, help="bytes of track per ride")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-debt-read", action="store_true")
    parser.add_argument("--projector-interval", dest="interval", type=float, default=0.01)
    parser.add_argument(
        "--premake", type=int, default=7, help="future daily partitions (30 hot days: ~38)"
    )
    parser.add_argument("--compare-upto", help="e.g. 0009: also measure the schema up to it")
    parser.add_argument(
        "--parent", action="store_true", help="also run the steps on orders, not the partition"
    )
    parser.add_argument(
        "--set",
        metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
        action="append",
        default=[],
        help="also run the full schema in a database with these settings (ALTER DATABASE "
        "... SET), alternated with the others; repeat for several (i13pgconf)",
    )
    args = parser.parse_args(argv)
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
