"""``python -m tests.load.plan_cost``: one backend's CPU per statement, by ``plan_cache_mode``.

The statements a running stack sends again and again on a long-lived connection, each
timed by its own backend's CPU (``/proc/<pid>/schedstat``, as ``tests.load.step_cost``)
on two connections that differ only in ``plan_cache_mode`` (``auto``, PostgreSQL's
default: five custom plans, then the generic one if it does not look dearer; and
``force_generic_plan``), alternated ``--rounds`` times in one database after
``--flows`` ride flows (``tests.load.pg_steps``) gave the tables rows:

- ``receipts``: the projector's receipt inputs of a batch of ``--batch`` ended orders
  (``query_api.repository.receipt_inputs_of``, on the partitioned ``orders``);
- ``claim``/``mark``: the projector's claim and mark of a batch (``_CLAIM``, ``_MARK``);
- ``debt``: the offer's debt read (``command_api.repository.recorded_debt``).

Each connection runs every statement ``--warm`` times before it is timed, so the
steady state of a long-lived pool is measured, not its first five custom plans. Prints
the median µs of backend CPU per statement for each mode, and the generic plan of the
receipt query (``EXPLAIN (ANALYZE)``: partitions pruned at execution, "Subplans
Removed"). ``--premake`` sets the future daily partitions (production: 7 ahead and 30
hot days, ``--premake 40`` for as many).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import uvloop

from command_api import repository as command_repo
from query_api import repository as query_repo
from query_api.projector import _CLAIM, _MARK
from shared.ids import created_at_of
from shared.settings import Settings
from tests.load import pg_steps
from tests.load.scenarios import track_for
from tests.load.step_cost import backend_cpu_ns

MODES = ("auto", "force_generic_plan")


async def _timed(pid: int, call: Callable[[], Awaitable[Any]], times: int) -> float:
    before = backend_cpu_ns(pid)
    for _ in range(times):
        await call()
    return (backend_cpu_ns(pid) - before) / 1000 / times


def statements(
    conn: asyncpg.Connection, ids: list[uuid.UUID], users: list[str], batch: int
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The statements timed, each as a call on ``conn``."""
    n = [0]

    def some_ids() -> list[uuid.UUID]:
        n[0] = (n[0] + batch) % max(1, len(ids) - batch)
        return ids[n[0] : n[0] + batch]

    async def claim_and_mark() -> None:
        async with conn.transaction():
            rows = await conn.fetch(_CLAIM, batch)
            await conn.fetchval(_MARK, [r["id"] for r in rows])
            raise _Rollback  # leave the outbox as it was: every round claims the same rows

    async def claim_mark() -> None:
        with contextlib.suppress(_Rollback):
            await claim_and_mark()

    return {
        "receipts": lambda: query_repo.receipt_inputs_of(conn, some_ids()),
        "claim+mark": claim_mark,
        "debt": lambda: command_repo.recorded_debt(conn, users[n[0] % len(users)]),
    }


class _Rollback(Exception):
    pass


async def run(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    dsn = base.db.url.rsplit("/", 1)[0] + f"/scooters_plancost_{secrets.token_hex(3)}"
    try:
        await pg_steps.migrate_upto(
            base.replace(db={"url": dsn}, maintenance={"partition_premake_days": args.premake}),
            None,
        )
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
        pg_steps._json_track = command_repo.encode_json(track_for(1024))
        riders = [f"rider-{secrets.token_hex(4)}" for _ in range(args.flows)]
        try:
            for r in riders:  # no projector: the outbox keeps every event unpublished
                await pg_steps.flow(pool, r, f"s-{r}", True)
        finally:
            await pool.close()
        conns = {
            mode: await asyncpg.connect(dsn, server_settings={"plan_cache_mode": mode})
            for mode in MODES
        }
        try:
            ids = [
                r["id"]
                for r in await conns["auto"].fetch(
                    "SELECT id FROM orders WHERE status = 'finished' ORDER BY id"
                )
            ]
            assert all(created_at_of(i) for i in ids)
            pids = {m: await c.fetchval("SELECT pg_backend_pid()") for m, c in conns.items()}
            calls = {m: statements(c, ids, riders, args.batch) for m, c in conns.items()}
            for mode in MODES:
                for call in calls[mode].values():
                    for _ in range(args.warm):
                        await call()
            results: dict[str, dict[str, list[float]]] = {
                m: {s: [] for s in calls[m]} for m in MODES
            }
            for _ in range(args.rounds):
                for mode in MODES:
                    for name, call in calls[mode].items():
                        results[mode][name].append(await _timed(pids[mode], call, args.calls))
            print(
                f"{len(ids)} ended orders, "
                f"{await conns['auto'].fetchval('SELECT count(*) FROM orders_partitions()')}"
                f" partitions; median µs of backend CPU per statement, {args.rounds} rounds"
                f" of {args.calls}"
            )
            names = list(calls["auto"])
            print(f"{'mode':<20}" + "".join(f"{n:>12}" for n in names))
            for mode in MODES:
                row = "".join(f"{statistics.median(results[mode][n]):12.0f}" for n in names)
                print(f"{mode:<20}{row}")
            conn = conns["force_generic_plan"]
            await conn.execute(
                "PREPARE receipts(uuid[], timestamptz[]) AS " + query_repo._RECEIPT_INPUTS
            )
            some = ids[: args.batch]
            id_list = ",".join(str(i) for i in some)
            at_list = ",".join(f'"{created_at_of(i).isoformat()}"' for i in some)
            plan = await conn.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)"
                f" EXECUTE receipts('{{{id_list}}}', '{{{at_list}}}')"
            )
            print("generic plan of the receipt query:")
            for line in plan:
                print("   ", line[0])
        finally:
            for c in conns.values():
                await c.close()
    finally:
        await pg_steps._drop(dsn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.plan_cost", description=__doc__)
    parser.add_argument("--flows", type=int, default=300, help="ride flows made first")
    parser.add_argument("--batch", type=int, default=20, help="orders per receipt query")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed batch")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warm", type=int, default=10, help="untimed calls per connection")
    parser.add_argument("--premake", type=int, default=7, help="future daily partitions")
    args = parser.parse_args(argv)
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
