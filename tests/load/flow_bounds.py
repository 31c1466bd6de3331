"""``python -m tests.load.flow_bounds``: the least Postgres CPU a ride flow's SQL costs, and
what each candidate design change would save (issue 13, "i13bounds").

An extension of :mod:`tests.load.step_cost`: the same four steps (start, activate, finish
with a ``--z``-byte track, settle; the statements of ``command_api.repository``, sent to
the order's day partition) over ``--orders`` rides a batch, each batch timed by the
backends' own CPU (``/proc/<pid>/schedstat``), plus the projector's share, replayed on a
second connection after each step's batch (its claim ``FOR UPDATE SKIP LOCKED`` of up to
``--proj-batch`` rows, the receipt query of the ended rides, the mark; a commit every
``--proj-group`` batches, as the projector's 0.1 s commit at ≈ 200 flows/s), and the
CPU of a ``LISTEN outbox`` backend, as the projector's. Riders and scooters are reused
from round to round (``user_summary`` is updated, as in the load test).

Each *schema* is its own scratch database (migrated, then changed by this tool's DDL:
nothing here is a migration):

- ``control``: today's schema;
- ``nonotify``: the outbox's ``NOTIFY`` trigger dropped (the figures in docs/benchmarks.md,
  "i13bounds", were taken before migration 0013 removed it from every schema, ADR 0027;
  since then ``nonotify`` is ``control``);
- ``lz4``: ``orders.track`` compressed with lz4 (every partition);
- ``cursor``: outbox insert-only: its two partial indexes dropped, no marks; the
  projector reads ``id > last`` and saves its cursor in a one-row table once per group
  (a bound: a real cursor must deal with ids committed out of order);
- ``nopay``: no ``payment_operations`` writes at all (the hold and charge insert and
  close: 4 row writes a flow; a bound);
- ``payrow``: ``nopay`` with the owed operation on the order row instead
  (``orders.payment_due_at`` set at start and finish, cleared at activate and settle,
  with a partial index for the worker: the updates that change it are not HOT);
- ``all``: ``cursor`` + ``payrow`` + ``nonotify``.

A *variant* is ``schema[/gK][/cN]``: ``/gK`` sends each step's statements of K rides in
one transaction and one round trip (``executemany``: one Sync, so one commit; the bound
of group commit), ``/cN`` runs each step's batch over N connections at once (the CPU of
all of them). Without ``/gK`` each statement is its own transaction (today). Variants
run in pairs with the first of ``--variants`` (the control) in the same seconds, the
pairs' order alternating, ``--rounds`` times; prints the median per column, µs of backend
CPU per flow, and the median of each variant's differences to the control beside it (on
a shared box the pairs' differences scatter less than the absolute figures).

``--watch`` instead samples a running load test's Postgres backends (the newest
``scooters_bench_*`` database, or ``--database``): CPU per backend from schedstat over
``--seconds`` from its ``--after-orders``-th order on, each backend classed by the
statements it was seen running, and the server's own processes (WAL writer,
checkpointer, ...), per order created meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import uvloop

from command_api import repository as repo
from query_api.projector import _CLAIM, _MARK, _OLDEST
from query_api.repository import _RECEIPT_INPUTS
from shared.domain import NewOrder
from shared.ids import created_at_of
from shared.lifecycle import ACTIVATE, DEBT_ALLOWED, decide_finish, decide_settle
from shared.settings import Settings
from tests.load.pg_steps import _drop, migrate_upto, new_order
from tests.load.scenarios import track_for
from tests.load.step_cost import backend_cpu_ns

COLUMNS = ("start", "activate", "finish", "settle", "steps", "projector", "listen", "flow")
SCHEMAS = ("control", "nonotify", "lz4", "cursor", "nopay", "payrow", "all")
DEFAULT_VARIANTS = (
    "control,control/g1,control/g4,control/g8,control/g16,control/g32,"
    "nonotify,lz4,cursor,nopay,payrow,all,all/g16"
)
_START = "SELECT start_ride($1, $2, $3, $4, $5)"
_READ = """
SELECT id, created_at, payload::text AS payload FROM outbox
 WHERE id > $1 ORDER BY id LIMIT $2
"""
_SAVE_CURSOR = "UPDATE projector_cursor SET last_id = $1 WHERE id = 1"
_PAY_STATEMENT = re.compile(r"\n\s*(INSERT INTO|UPDATE) payment_operations\b.*?;", re.DOTALL)
_ENDED = ("finished", "cancelled", "rejected")


@dataclass(frozen=True)
class Variant:
    """``schema[/gK][/cN]``: a scratch schema, the rides per transaction (0: one
    statement per transaction, as today) and the connections sending at once."""

    name: str
    schema: str
    group: int = 0
    conns: int = 1

    @classmethod
    def parse(cls, text: str) -> Variant:
        schema, *mods = text.split("/")
        if schema not in SCHEMAS:
            raise ValueError(f"unknown schema {schema!r} (one of {', '.join(SCHEMAS)})")
        group = conns = 0
        for mod in mods:
            if mod[:1] == "g" and mod[1:].isdigit():
                group = int(mod[1:])
            elif mod[:1] == "c" and mod[1:].isdigit():
                conns = int(mod[1:])
            else:
                raise ValueError(f"unknown modifier {mod!r} in {text!r} (gK or cN)")
        return cls(text, schema, group, max(conns, 1))


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise AssertionError(f"{old!r} not found in the statement")
    return text.replace(old, new)


def step_sql(schema: str, step: str, table: str) -> str:
    """The statement ``step`` sends to partition ``table`` in ``schema``'s database."""
    text = repo._statement(step, table)
    if schema in ("nopay", "payrow", "all") and step == "settle":
        text = _replace(
            text,
            "WITH p AS (\n    UPDATE payment_operations SET state = $5, updated_at = now()\n"
            "     WHERE order_id = $1 AND kind = 'charge' AND state = 'pending'\n"
            "    RETURNING 1\n), o AS (",
            "WITH o AS (",
        )
        text = _replace(text, "AND EXISTS (SELECT FROM p)", "AND $5::text IS NOT NULL")
    if schema in ("payrow", "all"):
        if step == "activate":
            text = _replace(text, "started_at = $3,", "started_at = $3, payment_due_at = NULL,")
        elif step == "finish_on_terms":
            text = _replace(
                text,
                "track = $10,",
                "track = $10, payment_due_at = now() + make_interval(secs => $12),",
            )
        elif step == "settle":
            text = _replace(
                text, "SET payment_status = $4,", "SET payment_status = $4, payment_due_at = NULL,"
            )
    return text


async def _set_compression(conn: asyncpg.Connection, method: str) -> None:
    tables = ["orders", *[r["name"] for r in await conn.fetch(repo._LIST_PARTITIONS)]]
    for table in tables:  # SET COMPRESSION does not recurse
        await conn.execute(f"ALTER TABLE {table} ALTER COLUMN track SET COMPRESSION {method}")


async def _without_payment_operations(conn: asyncpg.Connection, payrow: bool) -> None:
    """Rewrite the step functions without their ``payment_operations`` statements (and,
    with ``payrow``, the start setting ``orders.payment_due_at`` instead)."""
    rows = await conn.fetch(
        "SELECT proname, pg_get_functiondef(oid) AS def FROM pg_proc"
        " WHERE proname = ANY($1::text[])",
        ["start_ride", "ride_activated", "ride_finished"],
    )
    assert len(rows) == 3, [r["proname"] for r in rows]
    for row in rows:
        text, n = _PAY_STATEMENT.subn("", row["def"])
        assert n == 1, (row["proname"], n)
        if payrow and row["proname"] == "start_ride":
            text = _replace(
                text,
                "o.updated_at := now();",
                "o.updated_at := now();\n"
                "    o.payment_due_at := now() + make_interval(secs => p_hold_due_seconds);",
            )
        await conn.execute(text)


async def prepare_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Apply ``schema``'s changes to a freshly migrated database (scratch only)."""
    if schema in ("nonotify", "all"):
        # since migration 0013 (ADR 0027) no schema has the trigger: nonotify = control
        await conn.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    if schema == "lz4":
        await _set_compression(conn, "lz4")
    if schema in ("cursor", "all"):
        await conn.execute(
            "DROP INDEX outbox_unpublished; DROP INDEX outbox_published;"
            " CREATE TABLE projector_cursor (id integer PRIMARY KEY, last_id bigint NOT NULL);"
            " INSERT INTO projector_cursor VALUES (1, 0)"
        )
    if schema in ("payrow", "all"):
        await conn.execute(
            "ALTER TABLE orders ADD COLUMN payment_due_at timestamptz;"
            " CREATE INDEX orders_payment_due ON orders (payment_due_at)"
            " WHERE payment_due_at IS NOT NULL"
        )
    if schema in ("nopay", "payrow", "all"):
        await _without_payment_operations(conn, payrow=schema != "nopay")


@dataclass
class Database:
    """One schema's scratch database: its step connections, the projector's, a listener."""

    schema: str
    dsn: str
    conns: list[asyncpg.Connection] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    projector: asyncpg.Connection | None = None
    projector_pid: int = 0
    listener: asyncpg.Connection | None = None
    listener_pid: int = 0
    notified: int = 0
    partitions: Any = None

    async def connect(self, n: int) -> None:
        while len(self.conns) < n:
            conn = await asyncpg.connect(self.dsn)
            self.conns.append(conn)
            self.pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
        if self.projector is None:
            self.projector = await asyncpg.connect(self.dsn)
            self.projector_pid = await self.projector.fetchval("SELECT pg_backend_pid()")
            self.listener = await asyncpg.connect(self.dsn)
            self.listener_pid = await self.listener.fetchval("SELECT pg_backend_pid()")
            await self.listener.add_listener("outbox", self._notified)
            self.partitions = repo._Partitions(
                await self.projector.fetch(repo._LIST_PARTITIONS), time.monotonic()
            )

    def _notified(self, *_: Any) -> None:
        self.notified += 1

    async def close(self) -> None:
        for conn in [*self.conns, self.projector, self.listener]:
            if conn is not None:
                await conn.close()


def _cpu(pids: Sequence[int]) -> int:
    return sum(backend_cpu_ns(pid) for pid in pids)


async def _send(
    conn: asyncpg.Connection, sql: str, args: list[tuple[Any, ...]], group: int
) -> None:
    """Each statement its own transaction (``group`` 0: what the command side does), or
    ``group`` rides' statements per transaction and round trip."""
    if group == 0:
        for a in args:
            await conn.fetchval(sql, *a)
        return
    for at in range(0, len(args), group):
        await conn.executemany(sql, args[at : at + group])


async def _timed_step(
    db: Database,
    variant: Variant,
    sql_of: Callable[[NewOrder], str],
    args: list[tuple[Any, ...]],
    orders: list[NewOrder],
) -> float:
    """Send one step for every ride over the variant's connections; backend CPU µs."""
    by_table: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for order, a in zip(orders, args, strict=True):
        by_table[sql_of(order)].append(a)
    n = variant.conns
    pids = db.pids[:n]
    before = _cpu(pids)

    async def share(i: int) -> None:
        for sql, rows in by_table.items():
            await _send(db.conns[i], sql, rows[i::n], variant.group)

    await asyncio.gather(*(share(i) for i in range(n)))
    return (_cpu(pids) - before) / 1000


def _ended_ids(rows: list[asyncpg.Record]) -> list[uuid.UUID]:
    ended = []
    for row in rows:
        order = msgspec.json.decode(row["payload"])["order"]
        if order["status"] in _ENDED:
            ended.append(uuid.UUID(order["id"]))
    return ended


async def _receipts(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
    ended = _ended_ids(rows)
    if ended:
        await conn.fetch(_RECEIPT_INPUTS, ended, [created_at_of(i) for i in ended])


async def replay_projector(db: Database, cursor: bool, batch: int, group: int) -> float:
    """The projector's statements over every unpublished event; its backend's CPU µs."""
    conn = db.projector
    assert conn is not None
    before = backend_cpu_ns(db.projector_pid)
    if cursor:
        last = await conn.fetchval("SELECT last_id FROM projector_cursor WHERE id = 1")
        batches = 0
        while rows := await conn.fetch(_READ, last, batch):
            await _receipts(conn, rows)
            last = rows[-1]["id"]
            batches += 1
            if batches % group == 0:
                await conn.execute(_SAVE_CURSOR, last)
        await conn.execute(_SAVE_CURSOR, last)
    else:
        marked = False
        tx = conn.transaction()
        await tx.start()
        batches = 0
        while True:
            rows = await conn.fetch(_CLAIM, batch)
            if not rows:
                await conn.fetchval(_OLDEST)
                break
            await _receipts(conn, rows)
            await conn.fetchval(_MARK, [row["id"] for row in rows])
            marked = True
            batches += 1
            if batches % group == 0:
                await tx.commit()
                tx = conn.transaction()
                await tx.start()
                marked = False
        await (tx.commit() if marked else tx.rollback())
    return (backend_cpu_ns(db.projector_pid) - before) / 1000


async def one_round(
    db: Database, variant: Variant, orders: int, track: str, args: argparse.Namespace
) -> dict[str, float]:
    """``orders`` rides through the four steps, ``variant``'s way; CPU µs per flow."""
    await db.connect(variant.conns)
    cursor = db.schema in ("cursor", "all")
    news = [new_order(f"r-{n}", f"s-{n}") for n in range(orders)]
    table = {o.id: db.partitions.table_of(o.created_at) for o in news}
    assert all(table.values()), "an order's day has no partition of its own"
    sqls = {
        step: {t: step_sql(db.schema, step, t) for t in set(table.values())}
        for step in ("activate", "finish_on_terms", "settle")
    }
    listen_before = backend_cpu_ns(db.listener_pid)
    result: dict[str, float] = {"projector": 0.0}
    expires = datetime.now(UTC) + timedelta(minutes=5)
    result["start"] = await _timed_step(
        db,
        variant,
        lambda o: _START,
        [(repo._json.encode(o).decode(), expires, 1, DEBT_ALLOWED, 60.0) for o in news],
        news,
    )
    started_at = datetime.now(UTC)
    step = ACTIVATE
    result["activate"] = await _timed_step(
        db,
        variant,
        lambda o: sqls["activate"][table[o.id]],
        [
            (
                uuid.UUID(o.id),
                o.created_at,
                started_at,
                step.status_from,
                step.status_to,
                step.payment_to,
            )
            for o in news
        ],
        news,
    )
    result["projector"] += await replay_projector(db, cursor, args.proj_batch, args.proj_group)
    finished_at = datetime.now(UTC)
    decisions = [
        decide_finish(
            started_at=started_at,
            finished_at=finished_at,
            price_per_minute=o.price_per_minute,
            price_unlock=o.price_unlock,
            free_ride_seconds=o.free_ride_seconds,
            max_cost=10**9,
            max_charged_seconds=10**9,
        )
        for o in news
    ]
    result["finish"] = await _timed_step(
        db,
        variant,
        lambda o: sqls["finish_on_terms"][table[o.id]],
        [
            (
                uuid.UUID(o.id),
                o.created_at,
                d.transition.status_from,
                d.transition.status_to,
                d.transition.payment_to,
                d.finished_at,
                d.duration_seconds,
                d.total_amount,
                1234,
                track,
                d.rides_count_delta,
                4.0,
                started_at,
                o.price_per_minute,
                o.price_unlock,
                o.free_ride_seconds,
            )
            for o, d in zip(news, decisions, strict=True)
        ],
        news,
    )
    result["projector"] += await replay_projector(db, cursor, args.proj_batch, args.proj_group)
    settles = [decide_settle(d.total_amount) for d in decisions]
    result["settle"] = await _timed_step(
        db,
        variant,
        lambda o: sqls["settle"][table[o.id]],
        [
            (
                uuid.UUID(o.id),
                o.created_at,
                s.payment_from,
                s.payment_to,
                s.operation_state,
                s.total_charged_delta,
                s.debt_delta,
            )
            for o, s in zip(news, settles, strict=True)
        ],
        news,
    )
    result["projector"] += await replay_projector(db, cursor, args.proj_batch, args.proj_group)
    await asyncio.sleep(0.05)  # the last NOTIFYs reach the listener
    result["listen"] = (backend_cpu_ns(db.listener_pid) - listen_before) / 1000
    assert db.projector is not None
    done = await db.projector.fetchval(
        "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND status = 'finished'"
        " AND payment_status = ANY(ARRAY['charged', 'released'])",
        [uuid.UUID(o.id) for o in news],
    )
    assert done == orders, f"{variant.name}: {done} of {orders} rides settled"
    per = {k: v / orders for k, v in result.items()}
    per["steps"] = per["start"] + per["activate"] + per["finish"] + per["settle"]
    per["flow"] = per["steps"] + per["projector"] + per["listen"]
    return per


def _line(name: str, r: dict[str, float]) -> str:
    return f"  {name:<14}" + "".join(f" {r[c]:9.1f}" for c in COLUMNS)


def _header() -> str:
    return f"  {'µs per flow':<14}" + "".join(f" {c:>9}" for c in COLUMNS)


async def run(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    tag = secrets.token_hex(3)
    track = repo.encode_json(track_for(args.z)) if args.z else ""
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    dbs: dict[str, Database] = {}
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    deltas: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants[1:]}
    try:
        for schema in dict.fromkeys(v.schema for v in variants):
            dsn = base.db.url.rsplit("/", 1)[0] + f"/scooters_bounds_{tag}_{schema}"
            dbs[schema] = Database(schema, dsn)
            await migrate_upto(
                base.replace(db={"url": dsn}, maintenance={"partition_premake_days": args.premake}),
                None,
            )
            conn = await asyncpg.connect(dsn)
            try:
                await prepare_schema(conn, schema)
            finally:
                await conn.close()
        print(f"{len(dbs)} scratch databases; {args.orders} rides a batch", flush=True)
        for v in variants:  # warm-up: plans, caches, the riders' summaries
            await one_round(dbs[v.schema], v, args.orders, track, args)
        print(_header())
        control = variants[0]
        for n in range(args.rounds):
            # each variant beside a run of the first (the control) in the same seconds; the
            # pair's order alternates from round to round
            for v in variants[1:] if n % 2 == 0 else variants[:0:-1]:
                pair = [control, v] if n % 2 == 0 else [v, control]
                got = {}
                for w in pair:
                    got[w.name] = await one_round(dbs[w.schema], w, args.orders, track, args)
                    print(_line(w.name, got[w.name]), flush=True)
                results[control.name].append(got[control.name])
                results[v.name].append(got[v.name])
                deltas[v.name].append({c: got[v.name][c] - got[control.name][c] for c in COLUMNS})
    finally:
        for db in dbs.values():
            await db.close()
            await _drop(db.dsn)
    print(f"median of {args.rounds} rounds, backend CPU µs per flow:")
    print(_header())
    for name, rounds in results.items():
        if rounds:
            print(_line(name, {c: statistics.median(r[c] for r in rounds) for c in COLUMNS}))
    print(f"median of the {args.rounds} differences to {variants[0].name} beside it, µs per flow:")
    print(_header())
    for name, rounds in deltas.items():
        if rounds:
            print(_line(name, {c: statistics.median(r[c] for r in rounds) for c in COLUMNS}))


# --- --watch: a running load test's backends ------------------------------------------------

_ROLES = (  # first match of the statements a backend was seen running
    ("listen", ("LISTEN",)),
    ("projector", ("FROM outbox", "UPDATE outbox", "order_refunds_json")),
    (
        "command",
        ("start_ride", "ride_activated", "ride_finished", "charge_settled", "user_summary"),
    ),
    ("worker", ("payment_operations", "partman", "active_rides")),
)


def _role(queries: set[str]) -> str:
    for role, needles in _ROLES:
        if any(needle in q for q in queries for needle in needles):
            return role
    return "other (counters, probes)"


def _postgres_pids() -> dict[int, str]:
    """Every Postgres process on this machine and its title."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
            found[int(entry)] = (
                Path(f"/proc/{entry}/cmdline")
                .read_bytes()
                .decode(errors="replace")
                .replace("\0", " ")
                .strip()
            )
        except OSError:
            continue
    return found


async def watch(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    admin = await asyncpg.connect(base.db.url.rsplit("/", 1)[0] + "/postgres")
    try:
        database = args.database
        deadline = time.monotonic() + args.wait
        while database is None:
            database = await admin.fetchval(
                "SELECT datname FROM pg_database WHERE datname LIKE 'scooters_bench_%'"
                " ORDER BY oid DESC LIMIT 1"
            )
            if database is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no scooters_bench_* database appeared")
                await asyncio.sleep(0.2)
        print(f"{datetime.now(UTC):%H:%M:%S} watching {database}", flush=True)
        db = await _when_loaded(base.db.url.rsplit("/", 1)[0] + f"/{database}", args)
        try:
            own = await db.fetchval("SELECT pg_backend_pid()")
            seen: defaultdict[int, set[str]] = defaultdict(set)
            orders0 = await db.fetchval("SELECT count(*) FROM orders")
            pids = _postgres_pids()
            cpu0 = {pid: _ns(pid) for pid in pids}
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                for row in await db.fetch(
                    "SELECT pid, query FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
                    database,
                    own,
                ):
                    seen[row["pid"]].add(row["query"] or "")
                await asyncio.sleep(0.05)
            later = _postgres_pids()
            cpu1 = {pid: _ns(pid) for pid in later}
            for pid, title in later.items():  # connections opened in the window
                if pid not in pids:
                    pids[pid], cpu0[pid] = title, 0
            orders = await db.fetchval("SELECT count(*) FROM orders") - orders0
            print(f"{datetime.now(UTC):%H:%M:%S} window ends", flush=True)
        finally:
            await db.close()
    finally:
        await admin.close()
    by_role: defaultdict[str, list[float]] = defaultdict(list)
    pids_of: defaultdict[str, list[int]] = defaultdict(list)
    for pid, title in pids.items():
        spent = (cpu1.get(pid, cpu0[pid]) - cpu0[pid]) / 1e6
        if f" {database} " in f"{title} ":
            role = "own sampler" if pid == own else _role(seen.get(pid, set()))
        elif re.match(r"postgres: \S+ \S+ ", title) and "scooters_bench_" not in title:
            role = "other databases (not counted)"
        elif "scooters_bench_" in title:
            role = "other bench databases (not counted)"
        else:
            role = "server: " + title.removeprefix("postgres: ").split(" ")[0]
        by_role[role].append(spent)
        pids_of[role].append(pid)
    print(f"{orders} orders in {args.seconds:.0f} s; CPU-ms per order (backends):")
    for role, spents in sorted(by_role.items(), key=lambda kv: -sum(kv[1])):
        if sum(spents) > 0:
            print(f"  {role:<36} {len(spents):3d} procs {sum(spents) / max(orders, 1):7.3f} ms")
    for role in ("command", "projector", "listen", "worker"):
        print(f"  pids {role}: {','.join(map(str, pids_of[role]))}")


async def _when_loaded(dsn: str, args: argparse.Namespace) -> asyncpg.Connection:
    """A connection to the load test's database once it holds ``--after-orders`` orders
    (past the warm-up's rides: the measured phase has begun)."""
    deadline = time.monotonic() + args.wait
    while True:
        try:
            db = await asyncpg.connect(dsn)
            try:
                while await db.fetchval("SELECT count(*) FROM orders") < args.after_orders:
                    if time.monotonic() > deadline:
                        raise SystemExit("the load test did not start")
                    await asyncio.sleep(0.1)
            except BaseException:
                await db.close()
                raise
            return db
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _ns(pid: int) -> int:
    try:
        return backend_cpu_ns(pid)
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load.flow_bounds", description=__doc__)
    parser.add_argument("--orders", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--z", type=int, default=10_240, help="bytes of track per ride")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated")
    parser.add_argument("--premake", type=int, default=7, help="future daily partitions")
    parser.add_argument("--proj-batch", type=int, default=16, help="events per claim")
    parser.add_argument("--proj-group", type=int, default=4, help="claims per commit")
    parser.add_argument("--watch", action="store_true", help="sample a running load test")
    parser.add_argument("--database", help="--watch: the load test's database")
    parser.add_argument("--wait", type=float, default=120.0, help="--watch: for the database")
    parser.add_argument(
        "--after-orders", type=int, default=300, help="--watch: start once it has as many"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="--watch: window")
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/schedstat"):
        print("needs /proc/<pid>/schedstat (Linux) and Postgres on this machine")
        return 2
    uvloop.run(watch(args) if args.watch else run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
