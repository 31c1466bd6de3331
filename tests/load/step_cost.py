"""``python -m tests.load.step_cost``: one Postgres backend's CPU per ride step.

One connection runs ``--orders`` rides step by step (all starts, then all activations,
all finishes with a ``--z``-byte track, all settles), and each batch is timed by the
backend's own CPU time (``/proc/<pid>/schedstat``, nanoseconds on a CPU), so neither
concurrency nor the projector nor the other processes of a shared box count, only
their effect on the caches. Three ways of sending activate, finish and settle
alternate in one database (same tables, same partitions), ``--rounds`` times:

- ``legacy``: the 0004/0009 PL/pgSQL functions, which update ``orders`` themselves
  (what the command side sent before migration 0011);
- ``parent``: the 0011 statements (ADR 0017) sent to ``orders``;
- ``direct``: the 0011 statements sent to the order's own day partition;
- ``lz4`` (only if asked for with ``--variants``): ``direct`` with ``orders.track``
  compressed by lz4 instead of pglz.

``--premake`` sets how many future daily partitions the database has (production: 7
ahead and 30 hot days, ``--premake 40`` for as many). Prints the median per step, in
microseconds of backend CPU, and the track's stored (compressed) size.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from command_api import repository as repo
from shared.domain import NewOrder, Order
from shared.lifecycle import decide_finish, decide_settle
from shared.settings import Settings
from tests.load.pg_steps import LegacySteps, _drop, migrate_upto, new_order
from tests.load.scenarios import track_for

STEPS = ("start", "activate", "finish", "settle")
VARIANTS = ("legacy", "parent", "direct")
EXTRA = ("lz4",)  # direct, the track compressed with lz4 instead of pglz


def backend_cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid`` has run on a CPU (``/proc/<pid>/schedstat``)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def _timed(pid: int, calls: list[Callable[[], Awaitable[Any]]]) -> float:
    """Run ``calls`` in order; the backend's CPU microseconds per call."""
    before = backend_cpu_ns(pid)
    for call in calls:
        await call()
    return (backend_cpu_ns(pid) - before) / 1000 / len(calls)


async def one_round(
    conn: asyncpg.Connection, pid: int, variant: str, orders: int, track: str
) -> dict[str, float]:
    """``orders`` rides through the four steps, ``variant``'s way; CPU µs per step."""
    steps: Any = LegacySteps if variant == "legacy" else repo
    repo.DIRECT_PARTITIONS = variant in ("direct", "lz4")
    method = "lz4" if variant == "lz4" else "pglz"
    for table in [
        "orders",
        *[r["name"] for r in await conn.fetch("SELECT name FROM orders_partitions()")],
    ]:
        # each partition: SET COMPRESSION does not recurse
        await conn.execute(f"ALTER TABLE {table} ALTER COLUMN track SET COMPRESSION {method}")
    tag = secrets.token_hex(4)
    news: list[NewOrder] = [new_order(f"r-{tag}-{n}", f"s-{tag}-{n}") for n in range(orders)]
    started: list[Order] = []
    ended: list[Order] = []
    decisions = {}

    async def start(order: NewOrder) -> None:
        await repo.start_ride(conn, order, order.created_at + timedelta(minutes=5), 1, 60.0)

    async def activate(order: NewOrder) -> None:
        got = await steps.activate_ride(
            conn, uuid.UUID(order.id), order.created_at, datetime.now(UTC)
        )
        assert got is not None
        started.append(got)

    async def finish(order: Order) -> None:
        decision = decide_finish(
            started_at=order.started_at,
            finished_at=datetime.now(UTC),
            price_per_minute=order.price_per_minute,
            price_unlock=order.price_unlock,
            free_ride_seconds=order.free_ride_seconds,
            max_cost=10**9,
            max_charged_seconds=10**9,
        )
        decisions[order.id] = decision.total_amount
        got = await steps.finish_ride(
            conn, uuid.UUID(order.id), order.created_at, decision, 1234, track, 4.0, order
        )
        assert got is not None
        ended.append(got)

    async def settle(order: Order) -> None:
        got = await steps.settle_charge(
            conn, uuid.UUID(order.id), order.created_at, decide_settle(decisions[order.id])
        )
        assert got is not None

    result = {"start": await _timed(pid, [lambda o=o: start(o) for o in news])}  # type: ignore[misc]
    result["activate"] = await _timed(pid, [lambda o=o: activate(o) for o in news])  # type: ignore[misc]
    result["finish"] = await _timed(pid, [lambda o=o: finish(o) for o in list(started)])  # type: ignore[misc]
    result["settle"] = await _timed(pid, [lambda o=o: settle(o) for o in list(ended)])  # type: ignore[misc]
    result["track_bytes"] = await conn.fetchval(
        "SELECT avg(pg_column_size(track))::float8 FROM orders WHERE id = ANY($1::uuid[])",
        [uuid.UUID(o.id) for o in news],
    )
    return result


async def run(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    dsn = base.db.url.rsplit("/", 1)[0] + f"/scooters_stepcost_{secrets.token_hex(3)}"
    track = repo.encode_json(track_for(args.z)) if args.z else ""
    try:
        await migrate_upto(
            base.replace(db={"url": dsn}, maintenance={"partition_premake_days": args.premake}),
            None,
        )
        conn = await asyncpg.connect(dsn)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            partitions = await conn.fetchval("SELECT count(*) FROM orders_partitions()")
            print(f"{partitions} partitions of orders; {args.orders} rides a batch")
            variants = tuple(args.variants.split(","))
            for variant in variants:  # warm-up: plans, caches
                await one_round(conn, pid, variant, min(args.orders, 50), track)
            results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            for n in range(args.rounds):
                for variant in variants if n % 2 == 0 else variants[::-1]:
                    r = await one_round(conn, pid, variant, args.orders, track)
                    results[variant].append(r)
                    print(
                        f"  {variant:<7}"
                        + "".join(f" {s} {r[s]:7.1f}" for s in STEPS)
                        + f"  a+f+s {r['activate'] + r['finish'] + r['settle']:7.1f} µs"
                        + f"  track {r['track_bytes']:.0f} B stored",
                        flush=True,
                    )
        finally:
            await conn.close()
    finally:
        await _drop(dsn)
    print(f"median of {args.rounds} rounds, backend CPU µs per step:")
    for variant, rounds in results.items():
        med = {s: statistics.median(r[s] for r in rounds) for s in STEPS}
        steps3 = statistics.median(r["activate"] + r["finish"] + r["settle"] for r in rounds)
        print(
            f"  {variant:<7}"
            + "".join(f" {s} {med[s]:7.1f}" for s in STEPS)
            + f"  a+f+s {steps3:7.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.step_cost", description=__doc__)
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--z", type=int, default=10_240, help="bytes of track per ride")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--premake", type=int, default=7, help="future daily partitions")
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/schedstat"):
        print("needs /proc/<pid>/schedstat (Linux) and Postgres on this machine")
        return 2
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
