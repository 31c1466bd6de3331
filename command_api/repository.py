"""SQL of the command side, by hand. Every query on ``orders`` names the partition key."""

from __future__ import annotations

import bisect
import time
import uuid
import weakref
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from shared.domain import NewOrder, Order
from shared.ids import created_at_of
from shared.lifecycle import (
    ACTIVATE,
    DEBT_ALLOWED,
    REJECT,
    FinishDecision,
    OperationState,
    OrderStatus,
    SettleDecision,
)
from shared.receipt import ReceiptInputs, receipt_inputs

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_order = msgspec.json.Decoder(Order)
_json = msgspec.json.Encoder()
REFUSED = "SC409"  # SQLSTATE of a refused step (migrations/sql/0004_ride_steps_apply.sql)


class Refused(Exception):
    """A step refused (and rolled back); ``code`` is a ``shared.lifecycle.Refusal``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _decode(text: str | None) -> Order | None:
    return None if text is None else _order.decode(text)


# --- ride steps: one round trip each (functions in migrations/sql/0004_ride_steps_apply.sql) -
# The steps apply what shared.lifecycle decided; the SQL keeps only the row guards.


async def start_ride(
    conn: Connection,
    order: NewOrder,
    offer_expires_at: datetime,
    max_rides: int,
    hold_due_seconds: float,
) -> None:
    """Claim offer, scooter and ride slot; write ``order`` (one jsonb value) and the owed hold.

    Raises :class:`Refused` with a ``shared.lifecycle.Refusal`` code.
    """
    try:
        await conn.execute(
            "SELECT start_ride($1, $2, $3, $4, $5)",
            _json.encode(order).decode(),
            offer_expires_at,
            max_rides,
            DEBT_ALLOWED,
            hold_due_seconds,
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == REFUSED:
            raise Refused(str(exc.args[0])) from None
        raise


async def activate_ride(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, started_at: datetime
) -> Order | None:
    """Apply ``ACTIVATE`` once the hold is confirmed; None if the start was undone meanwhile."""
    step = ACTIVATE
    return await _step(
        conn,
        "activate",
        created_at,
        order_id,
        created_at,
        started_at,
        step.status_from,
        step.status_to,
        step.payment_to,
    )


async def reject_start(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, release: bool
) -> bool:
    """Apply ``REJECT`` (the hold failed) and free the claims; False if it was not starting."""
    step = REJECT
    return bool(
        await conn.fetchval(
            "SELECT reject_start($1, $2, $3, $4, $5, $6)",
            order_id,
            created_at,
            step.status_from,
            step.status_to,
            step.payment_to,
            release,
        )
    )


async def get_order(conn: Connection, order_id: uuid.UUID, created_at: datetime) -> Order | None:
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(order_snapshot_of(o))::text FROM orders o"
            " WHERE id = $1 AND created_at = $2",
            order_id,
            created_at,
        )
    )


async def finish_ride(
    conn: Connection,
    order_id: uuid.UUID,
    created_at: datetime,
    decision: FinishDecision,
    distance_meters: int,
    track: str | None,
    charge_due_seconds: float,
    terms: Order | None = None,
) -> Order | None:
    """Apply ``decision`` to an active ride and owe its charge; None when it was no longer
    active (another finish won). ``track`` is the GPS track as JSON text, or None.

    ``terms``: the snapshot the decision was computed from when it was not read just now
    (``rides.ActivatedRides``); the step then also returns None if the row's start time,
    prices or free seconds differ from it (migrations/sql/0009_finish_on_known_terms.sql).
    """
    step = decision.transition
    args = (
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
    )
    if terms is None:
        return await _step(conn, "finish", created_at, *args)
    return await _step(
        conn,
        "finish_on_terms",
        created_at,
        *args,
        terms.started_at,
        terms.price_per_minute,
        terms.price_unlock,
        terms.free_ride_seconds,
    )


async def record_order_action(
    conn: Connection,
    order_id: uuid.UUID,
    created_at: datetime,
    action: str,
    actor: str,
    roles: Iterable[str],
    reason: str | None = None,
    amount: int | None = None,
) -> None:
    """Note that ``actor`` (with ``roles``) did ``action`` to the order (``order_actions``),
    why (``reason``) and for how much (``amount``, a refund or a settled debt)."""
    await conn.execute(
        "INSERT INTO order_actions"
        " (order_id, order_created_at, action, actor, actor_roles, reason, amount)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        order_id,
        created_at,
        action,
        actor,
        sorted(roles),
        reason,
        amount,
    )


async def settle_charge(
    conn: Connection, order_id: uuid.UUID, created_at: datetime, decision: SettleDecision
) -> Order | None:
    """Apply ``decision`` (charged, released or debt); None if settled already."""
    return await _step(
        conn,
        "settle",
        created_at,
        order_id,
        created_at,
        decision.payment_from,
        decision.payment_to,
        decision.operation_state,
        decision.total_charged_delta,
        decision.debt_delta,
    )


# --- the ride steps on the order's own partition (ADR 0017, migrations/sql/0011) ------------
# activate, finish and settle each send one statement: a data-modifying WITH updates the
# order (guards as in 0004/0009: 0 rows = refused) and the step's function does the rest
# for the row it returned. Sent to the order's own day partition, a plain table, the
# statement's prepared plan is generic and kept per connection; sent to ``orders`` (the
# partitioned table) it is planned on every call, as the 0004 functions' UPDATE was.

_SNAPSHOT = (
    "ROW(id, user_id, scooter_id, zone_id, status, payment_status, price_per_minute,"
    " price_unlock, deposit, created_at, started_at, finished_at, duration_seconds,"
    " total_amount, distance_meters, version, offer_id, free_ride_seconds)::order_snapshot"
)
_TERMS = (
    " AND started_at = $13 AND price_per_minute = $14 AND price_unlock = $15"
    " AND free_ride_seconds = $16"
)
_FINISH_STEP = """
WITH o AS (
    UPDATE {table} SET status = $4, payment_status = $5, finished_at = $6,
                       duration_seconds = $7, total_amount = $8, distance_meters = $9,
                       track = $10, version = version + 1, updated_at = now()
     WHERE id = $1 AND created_at = $2 AND status = $3{terms}{attached}
    RETURNING {snapshot} AS snap
)
SELECT to_jsonb(ride_finished(snap, $11, $12))::text FROM o"""
_STEPS = {
    # $1 id, $2 created_at, $3 started_at, $4 status from, $5 status, $6 payment status
    "activate": """
WITH o AS (
    UPDATE {table} SET status = $5, payment_status = $6, started_at = $3,
                       version = version + 1, updated_at = now()
     WHERE id = $1 AND created_at = $2 AND status = $4{attached}
    RETURNING {snapshot} AS snap
)
SELECT to_jsonb(ride_activated(snap))::text FROM o""",
    # $1 id, $2 created_at, $3 status from, $4 status, $5 payment status, $6 finished_at,
    # $7 duration, $8 total, $9 distance, $10 track, $11 rides_count delta, $12 charge due
    "finish": _FINISH_STEP.replace("{terms}", ""),
    # ... and the terms the decision was computed from (0009)
    "finish_on_terms": _FINISH_STEP.replace("{terms}", _TERMS),
    # $1 id, $2 created_at, $3 payment from, $4 payment status, $5 operation state,
    # $6 total_charged delta, $7 debt delta; the owed charge is closed first (then the
    # order), as in 0004's settle_charge, and the order only if the charge was pending
    "settle": """
WITH p AS (
    UPDATE payment_operations SET state = $5, updated_at = now()
     WHERE order_id = $1 AND kind = 'charge' AND state = 'pending'
    RETURNING 1
), o AS (
    UPDATE {table} SET payment_status = $4, version = version + 1, updated_at = now()
     WHERE id = $1 AND created_at = $2 AND payment_status = $3 AND EXISTS (SELECT FROM p)
           {attached}
    RETURNING {snapshot} AS snap
)
SELECT to_jsonb(charge_settled(snap, $6, $7))::text FROM o""",
}
# On a partition, the step also requires it to be attached to ``orders`` still (a
# partition detached since it was looked up is, as for ``orders``, a row not found).
_ATTACHED = (
    " AND EXISTS (SELECT FROM pg_inherits WHERE inhrelid = '{name}'::regclass"
    " AND inhparent = 'orders'::regclass)"
)


def _statement(step: str, table: str | None) -> str:
    text = _STEPS[step]
    if table is None:
        return text.format(table="orders", attached="", snapshot=_SNAPSHOT)
    literal = table.replace("'", "''")
    return text.format(table=table, attached=_ATTACHED.format(name=literal), snapshot=_SNAPSHOT)


PARTITIONS_TTL = 300.0  # seconds a connection trusts its list of partitions


class _Partitions:
    """One connection's list of ``orders`` partitions (``orders_partitions()``), by range."""

    __slots__ = ("his", "loaded", "los", "names", "statements")

    def __init__(self, rows: list[asyncpg.Record], loaded: float) -> None:
        self.los: list[datetime] = [r["lo"] for r in rows]
        self.his: list[datetime] = [r["hi"] for r in rows]
        self.names: list[str] = [r["name"] for r in rows]
        self.loaded = loaded
        self.statements: dict[tuple[str, str], str] = {}

    def table_of(self, created_at: datetime) -> str | None:
        at = bisect.bisect_right(self.los, created_at) - 1
        return self.names[at] if at >= 0 and created_at < self.his[at] else None


_partitions: weakref.WeakKeyDictionary[Any, _Partitions] = weakref.WeakKeyDictionary()


async def _partition_of(conn: Connection, created_at: datetime) -> tuple[_Partitions, str] | None:
    """This connection's list of partitions and the one holding ``created_at``'s day; None
    when the day has no partition of its own (its rows are in the default partition, or
    maintenance is about to move them). The list is re-read every ``PARTITIONS_TTL`` s."""
    raw = getattr(conn, "_con", conn)  # the connection behind a pool's proxy
    now = time.monotonic()
    known = _partitions.get(raw)
    if known is None or now - known.loaded > PARTITIONS_TTL:
        known = _Partitions(await conn.fetch(_LIST_PARTITIONS), now)
        _partitions[raw] = known
    table = known.table_of(created_at)
    return None if table is None else (known, table)


_LIST_PARTITIONS = "SELECT name, lo, hi FROM orders_partitions()"


async def _step(conn: Connection, step: str, created_at: datetime, *args: Any) -> Order | None:
    """Run ``step`` (a key of ``_STEPS``) for the order created at ``created_at``: on its
    partition when it has one and ``conn`` is not in a transaction, else on ``orders``.

    A partition dropped or moved since it was looked up (``UndefinedTableError``) makes
    the connection forget its list and the step run on ``orders``. Inside a transaction
    that error would abort it, so there the step always runs on ``orders``.
    """
    if DIRECT_PARTITIONS and not conn.is_in_transaction():
        found = await _partition_of(conn, created_at)
        if found is not None:
            known, table = found
            statement = known.statements.get((step, table))
            if statement is None:
                statement = known.statements[(step, table)] = _statement(step, table)
            try:
                return _decode(await conn.fetchval(statement, *args))
            except asyncpg.UndefinedTableError:
                _partitions.pop(getattr(conn, "_con", conn), None)
    return _decode(await conn.fetchval(_PARENT_STEPS[step], *args))


_PARENT_STEPS = {step: _statement(step, None) for step in _STEPS}
# False: every step on ``orders`` (tests.load.pg_steps measures both ways)
DIRECT_PARTITIONS = True


async def recorded_debt(conn: Connection, user_id: str) -> int:
    """What the rider owes us for charges payments declined (debt, ADR 0002) (0 if nothing)."""
    debt = await conn.fetchval("SELECT debt FROM user_summary WHERE user_id = $1", user_id)
    return int(debt or 0)


async def order_of_offer(conn: Connection, offer_id: uuid.UUID) -> Order | None:
    """The order an offer started (while its redemption is kept), in any state."""
    order_id = await conn.fetchval(
        "SELECT order_id FROM offer_redemptions WHERE offer_id = $1", offer_id
    )
    return None if order_id is None else await get_order(conn, order_id, created_at_of(order_id))


async def stale_starts(
    conn: Connection,
    offer_id: uuid.UUID,
    scooter_id: str,
    user_id: str,
    own_older_than: float,
    older_than: float,
) -> list[asyncpg.Record]:
    """``starting`` orders in this start's way, presumed dead (their requests died before
    the hold was confirmed): the offer's own start older than ``own_older_than`` seconds,
    a start on the scooter or of the rider older than ``older_than``."""
    return await conn.fetch(
        "SELECT o.id, o.created_at FROM active_rides a"
        " JOIN orders o ON o.id = a.order_id AND o.created_at = a.order_created_at"
        " WHERE o.status = 'starting' AND ("
        "   (a.order_id = (SELECT order_id FROM offer_redemptions WHERE offer_id = $1)"
        "    AND o.created_at <= now() - make_interval(secs => $4))"
        "   OR ((a.scooter_id = $2 OR a.user_id = $3)"
        "       AND o.created_at <= now() - make_interval(secs => $5)))",
        offer_id,
        scooter_id,
        user_id,
        own_older_than,
        older_than,
    )


# --- payment operations -----------------------------------------------------------------------


async def finish_payment_operation(
    conn: Connection, order_id: uuid.UUID, kind: str, state: str = OperationState.DONE
) -> bool:
    """Close a pending operation; False when someone else closed it first."""
    closed = await conn.fetchval(
        "UPDATE payment_operations SET state = $3, updated_at = now()"
        " WHERE order_id = $1 AND kind = $2 AND state = 'pending' RETURNING true",
        order_id,
        kind,
        state,
    )
    return bool(closed)


async def claim_due_operations(
    conn: Connection, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    """Due operations, leased to this worker (pushed into the future) so no other takes them."""
    return await conn.fetch(
        "UPDATE payment_operations p SET next_attempt_at = now() + make_interval(secs => $2),"
        " attempts = p.attempts + 1, updated_at = now()"
        " FROM (SELECT order_id, kind FROM payment_operations"
        "       WHERE state = 'pending' AND next_attempt_at <= now()"
        "       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        " WHERE p.order_id = due.order_id AND p.kind = due.kind"
        " RETURNING p.order_id, p.kind, p.order_created_at, p.user_id, p.amount, p.attempts",
        limit,
        lease_seconds,
    )


async def reschedule_operation(
    conn: Connection, order_id: uuid.UUID, kind: str, delay_seconds: float, error: str
) -> None:
    await conn.execute(
        "UPDATE payment_operations SET next_attempt_at = now() + make_interval(secs => $3),"
        " last_error = $4, updated_at = now()"
        " WHERE order_id = $1 AND kind = $2 AND state = 'pending'",
        order_id,
        kind,
        delay_seconds,
        error,
    )


# --- idempotency keys -------------------------------------------------------------------------


async def claim_idempotency_key(
    conn: Connection, scope: str, key: str, request_hash: bytes, lease_seconds: float
) -> tuple[bool, asyncpg.Record | None]:
    """Claim a key for this request: ``(resumed, stored)``.

    ``(False, None)``: the key is new and now ours. ``(True, None)``: it was claimed
    ``lease_seconds`` or longer ago for the same request and never completed (that
    request died); the claim is now ours. ``(False, row)``: someone else holds or
    completed it; ``row`` has ``request_hash``, ``status_code`` and ``response``.
    """
    claimed = await conn.fetchrow(
        "INSERT INTO idempotency_keys AS k (scope, key, request_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (scope, key) DO UPDATE SET claimed_at = now()"
        "  WHERE k.status_code IS NULL AND k.request_hash = excluded.request_hash"
        "    AND k.claimed_at <= now() - make_interval(secs => $4)"
        " RETURNING k.xmax <> 0 AS resumed",
        scope,
        key,
        request_hash,
        lease_seconds,
    )
    if claimed is not None:
        return bool(claimed["resumed"]), None
    stored = await conn.fetchrow(
        "SELECT request_hash, status_code, response FROM idempotency_keys"
        " WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    return False, stored


async def complete_idempotency_key(
    conn: Connection, scope: str, key: str, status_code: int, response: bytes
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE scope = $1 AND key = $2",
        scope,
        key,
        status_code,
        response,
    )


async def forget_idempotency_key(conn: Connection, scope: str, key: str) -> None:
    await conn.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)


def encode_json(value: Any) -> str:
    """A value as JSON text for a json or jsonb parameter."""
    return msgspec.json.encode(value).decode()


async def abandoned_rides(
    conn: Connection, started_before: datetime, limit: int
) -> list[tuple[uuid.UUID, datetime]]:
    """Ids and start times of rides still holding their scooter that started before
    ``started_before`` (docs/rides-gone-wrong.md), oldest first."""
    rows = await conn.fetch(_ABANDONED, started_before, limit)
    return [(row["id"], row["started_at"]) for row in rows]


# The order's own start (what finish charges from); active_rides is small (rides now
# going), and each join names the order's partition key.
_ABANDONED = """
SELECT o.id, o.started_at FROM active_rides a
  JOIN orders o ON o.id = a.order_id AND o.created_at = a.order_created_at
 WHERE o.started_at < $1
 ORDER BY o.started_at
 LIMIT $2
"""


# --- operator commands (docs/operator-api.md; tables of migrations/sql/0008) --------------------

# an active ride (what a finish usually reads) has neither refunds nor a released debt hold
_WITH_RECEIPT_INPUTS = (
    "SELECT to_jsonb(order_snapshot_of(o))::text AS snapshot, o.pricing::text AS pricing,"
    " CASE WHEN o.status = $3 THEN '[]' ELSE order_refunds_json(o.id) END AS refunds,"
    " o.status <> $3 AND debt_hold_released(o.id) AS hold_released"
    " FROM orders o WHERE o.id = $1 AND o.created_at = $2"
)


async def order_with_receipt_inputs(
    conn: Connection, order_id: uuid.UUID, created_at: datetime
) -> tuple[Order, ReceiptInputs | None] | None:
    """The stored order and what its receipt needs (pricing, refunds, released hold)."""
    row = await conn.fetchrow(_WITH_RECEIPT_INPUTS, order_id, created_at, OrderStatus.ACTIVE)
    if row is None:
        return None
    order = _order.decode(row["snapshot"])
    return order, receipt_inputs(row["pricing"], row["refunds"], row["hold_released"])


class RefundRow(msgspec.Struct, frozen=True, kw_only=True):
    """A refund of an order (``order_refunds``): money in currency units."""

    refund_key: str
    amount: int
    state: str  # 'pending' until payments confirmed it, then 'done'


async def lock_order(conn: Connection, order_id: uuid.UUID, created_at: datetime) -> Order | None:
    """The stored order, its row locked until the transaction ends (refunds of one
    order are decided one at a time, so together they never exceed its charge)."""
    return _decode(
        await conn.fetchval(
            "SELECT to_jsonb(order_snapshot_of(o))::text FROM orders o"
            " WHERE id = $1 AND created_at = $2 FOR UPDATE",
            order_id,
            created_at,
        )
    )


async def refunds_of(conn: Connection, order_id: uuid.UUID) -> dict[str, RefundRow]:
    """The order's refunds, pending or done, by refund key."""
    rows = await conn.fetch(
        "SELECT refund_key, amount, state FROM order_refunds WHERE order_id = $1", order_id
    )
    return {r["refund_key"]: RefundRow(**dict(r.items())) for r in rows}


async def reserve_refund(
    conn: Connection,
    order: Order,
    refund_key: str,
    amount: int,
    reason: str,
    actor: str,
) -> None:
    """Record a refund as ``pending`` before payments is asked (it counts against the charge)."""
    await conn.execute(
        "INSERT INTO order_refunds"
        " (order_id, refund_key, order_created_at, user_id, amount, reason, actor)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        uuid.UUID(order.id),
        refund_key,
        order.created_at,
        order.user_id,
        amount,
        reason,
        actor,
    )


class PendingRefund(msgspec.Struct, frozen=True, kw_only=True):
    """A refund still ``pending`` (money in currency units) and who asked for it, why."""

    order_id: uuid.UUID
    refund_key: str
    user_id: str
    amount: int
    reason: str
    actor: str


async def stale_refunds(conn: Connection, older_than: float, limit: int) -> list[PendingRefund]:
    """Refunds ``pending`` for more than ``older_than`` seconds, oldest first."""
    rows = await conn.fetch(
        "SELECT order_id, refund_key, user_id, amount, reason, actor FROM order_refunds"
        " WHERE state = 'pending' AND created_at <= now() - make_interval(secs => $1)"
        " ORDER BY created_at LIMIT $2",
        older_than,
        limit,
    )
    return [PendingRefund(**dict(r.items())) for r in rows]


async def forget_refund(conn: Connection, order_id: uuid.UUID, refund_key: str) -> None:
    """Drop a pending refund that payments certainly did not make (refused, or down)."""
    await conn.execute(
        "DELETE FROM order_refunds WHERE order_id = $1 AND refund_key = $2 AND state = 'pending'",
        order_id,
        refund_key,
    )


async def confirm_refund(conn: Connection, order_id: uuid.UUID, refund_key: str) -> bool:
    """Mark a pending refund done; False when it was done already (a concurrent retry)."""
    done = await conn.fetchval(
        "UPDATE order_refunds SET state = 'done', done_at = now()"
        " WHERE order_id = $1 AND refund_key = $2 AND state = 'pending' RETURNING true",
        order_id,
        refund_key,
    )
    return bool(done)


# One operator change of an order, applied and projected in one statement: the order's
# payment status moves payment_from → payment_to (both NULL: unchanged) and its version
# grows; with change_summary the rider's total_charged and debt grow by the deltas; the
# event carries both snapshots (a NULL summary when it did not change).
_OPERATOR_CHANGE = """
WITH o AS (
    UPDATE orders SET payment_status = coalesce($4, payment_status), version = version + 1,
                      updated_at = now()
     WHERE id = $1 AND created_at = $2 AND payment_status = coalesce($3, payment_status)
    RETURNING order_snapshot_of(orders) AS snap, user_id
), s AS (
    UPDATE user_summary u
       SET total_charged = u.total_charged + $5, debt = u.debt + $6,
           last_payment_status = coalesce($4, u.last_payment_status),
           version = u.version + 1, updated_at = now()
      FROM o WHERE u.user_id = o.user_id AND $7
    RETURNING ROW(u.user_id, u.rides_count, u.total_charged, u.debt, u.last_payment_status,
                  u.version)::summary_snapshot AS snap
)
SELECT to_jsonb(o.snap)::text AS snapshot, append_order_event($8, o.snap, s.snap)
  FROM o LEFT JOIN s ON true
"""


async def apply_operator_change(
    conn: Connection,
    order_id: uuid.UUID,
    created_at: datetime,
    event: str,
    *,
    payment_from: str | None = None,
    payment_to: str | None = None,
    total_charged_delta: int = 0,
    debt_delta: int = 0,
    change_summary: bool = False,
) -> Order | None:
    """Apply one operator change (see ``_OPERATOR_CHANGE``) and append ``event``; None
    when the order is not ``payment_from`` (someone else changed it first)."""
    row = await conn.fetchrow(
        _OPERATOR_CHANGE,
        order_id,
        created_at,
        payment_from,
        payment_to,
        total_charged_delta,
        debt_delta,
        change_summary,
        event,
    )
    return None if row is None else _order.decode(row["snapshot"])


class Debt(msgspec.Struct, frozen=True, kw_only=True):
    """An order whose charge became the rider's debt: ``amount`` in currency units."""

    order_id: uuid.UUID
    created_at: datetime
    amount: int


async def debts_of(conn: Connection, user_id: str) -> list[Debt]:
    """The rider's orders whose charge became debt (payments declined it), oldest first."""
    rows = await conn.fetch(
        "SELECT order_id, order_created_at, amount FROM payment_operations"
        " WHERE user_id = $1 AND kind = 'charge' AND state = 'gave_up'"
        " ORDER BY order_created_at",
        user_id,
    )
    return [
        Debt(order_id=r["order_id"], created_at=r["order_created_at"], amount=r["amount"])
        for r in rows
    ]


async def close_debt(conn: Connection, order_id: uuid.UUID, kind: str, state: str) -> bool:
    """Close the gave-up charge of a settled debt as ``state``; False if already closed."""
    closed = await conn.fetchval(
        "UPDATE payment_operations SET state = $3, updated_at = now()"
        " WHERE order_id = $1 AND kind = $2 AND state = 'gave_up' RETURNING true",
        order_id,
        kind,
        state,
    )
    return bool(closed)


async def has_summary(conn: Connection, user_id: str) -> bool:
    """Whether the rider ever started a ride here (has a ``user_summary`` row)."""
    return bool(await conn.fetchval("SELECT true FROM user_summary WHERE user_id = $1", user_id))


async def owe_operation(
    conn: Connection,
    order_id: uuid.UUID,
    kind: str,
    created_at: datetime,
    user_id: str,
    amount: int,
) -> None:
    """Record a money movement we owe payments (retried by the worker until done)."""
    await conn.execute(
        "INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id, kind) DO NOTHING",
        order_id,
        kind,
        created_at,
        user_id,
        amount,
    )
