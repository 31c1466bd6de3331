"""The commands of the write side: price an offer, start a ride, finish it, settle its payment.

Handlers are plain functions that receive their dependencies; each database step is
one transaction that also appends its outbox event. Money moves only through payment
calls that are idempotent per (order, operation), and every movement we owe is
recorded in ``payment_operations`` before it is attempted, so a crash anywhere leaves
work for the worker instead of a hold without a ride or a ride without its charge.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from command_api import repository as repo
from command_api.debt_marks import DebtMarks
from command_api.external import ExternalServices, ServiceError
from shared.domain import NewOrder, Offer, Order, PricingInputs, TrackPoint
from shared.errors import DependencyUnavailable, OrderNotFound, PaymentDeclined, TrackTooLong
from shared.ids import created_at_of, uuid7
from shared.infra.auth import Principal
from shared.lifecycle import (
    DEBT_ALLOWED,
    NEW_ORDER,
    OperationKind,
    PaymentStatus,
    SettleDecision,
    check_no_debt,
    decide_finish,
    decide_settle,
    is_riding,
    is_visible,
    refusal_error,
)
from shared.offer_token import OfferSigner
from shared.pricing import quote, track_distance_meters
from shared.receipt import Receipt, ReceiptInputs, receipt_of
from shared.ride_rules import operator_end
from shared.settings import Settings

log = logging.getLogger("rides")


class ActivatedRides:
    """The rides this process activated and has not finished yet, by order id: what a
    finish here computes its end from without reading the order back (issue 13).

    The snapshot is the one the activation step returned, with the receipt inputs of an
    active ride (the offer's pricing inputs it was written with; no refunds, no released
    hold). The finish step decided from it applies only if the order is still ``active``
    and still has the snapshot's terms (``started_at``, prices, ``free_ride_seconds``;
    ADR 0005), else the ride is read and decided again, so an entry is as good as a
    fresh read. The rider and the pricing inputs of an order never change. A ride
    another process started, or one pushed out by ``limit`` newer ones, is read as before.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self._limit = limit
        self._rides: OrderedDict[uuid.UUID, tuple[Order, ReceiptInputs]] = OrderedDict()

    def add(self, order_id: uuid.UUID, order: Order, pricing: PricingInputs) -> None:
        self._rides[order_id] = (order, ReceiptInputs(pricing=pricing))
        if len(self._rides) > self._limit:
            self._rides.popitem(last=False)

    def take(self, order_id: uuid.UUID) -> tuple[Order, ReceiptInputs] | None:
        """The ride's snapshot at activation and its receipt inputs, forgotten here; None
        if this process has none."""
        return self._rides.pop(order_id, None)


@dataclass(frozen=True, slots=True)
class Deps:
    """What the commands need; built once by the app's lifespan (or by a test).

    ``debt_marks``: the riders' debt marks in Redis (``command_api.debt_marks``); None
    (a test's Deps) reads every offer's debt from Postgres and writes no marks.
    """

    pool: asyncpg.Pool
    services: ExternalServices
    signer: OfferSigner
    settings: Settings
    activated: ActivatedRides = field(default_factory=ActivatedRides)
    debt_marks: DebtMarks | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


class OrderAnswer(Order, frozen=True, kw_only=True):
    """An order as the finish (and an operator's end) answers it: the stored order and,
    once the ride has ended, its itemised receipt (``shared.receipt``)."""

    receipt: Receipt | None = None


def answer_of(order: Order, inputs: ReceiptInputs | None) -> OrderAnswer:
    """``order`` with its receipt (None while the ride is active)."""
    return OrderAnswer(**msgspec.structs.asdict(order), receipt=receipt_of(order, inputs))


# --- offers -----------------------------------------------------------------------------------


async def create_offer(
    deps: Deps, user_id: str, scooter_id: str, *, owes_nothing: bool = False
) -> tuple[Offer, str]:
    """Price a personal offer; returns it and its signed token. Writes nothing to Postgres.

    A rider who owes money gets no offer: debt the users service reports, or a charge
    payments declined to the last try (``user_summary.debt``). ``owes_nothing``: the
    rider's debt mark said ``clear`` (``command_api.debt_marks``), so that is not read;
    otherwise it is, and a read that finds nothing owed marks the rider ``clear``.
    """
    services = deps.services
    # the scooter is awaited here and the rest meanwhile as tasks; the debt only when it
    # must be read (each task costs CPU: ADR 0022)
    user_task = asyncio.ensure_future(services.user(user_id))
    configs_task = asyncio.ensure_future(services.configs())
    debt_task = None if owes_nothing else asyncio.ensure_future(_recorded_debt(deps, user_id))
    try:
        scooter = await services.scooter(scooter_id)
        user, configs = await user_task, await configs_task
        debt = 0 if debt_task is None else await debt_task
    finally:
        user_task.cancel()
        configs_task.cancel()
        if debt_task is not None:
            debt_task.cancel()
    check_no_debt(user_id, debt, source=" for an earlier ride")
    zone = await services.zone(scooter.zone_id)
    coeffs = configs.value
    price = quote(
        scooter, zone.value, user.value, coeffs, unknown_user=user.source == "conservative"
    )
    now = utcnow()
    offer = Offer(
        id=uuid7(),
        user_id=user_id,
        scooter_id=scooter_id,
        zone_id=scooter.zone_id,
        price_per_minute=price.price_per_minute,
        price_unlock=price.price_unlock,
        deposit=price.deposit,
        created_at=now,
        expires_at=now + timedelta(seconds=deps.settings.offers.ttl_seconds),
        inputs=PricingInputs(
            charge=scooter.charge,
            zone_price_per_minute=zone.value.price_per_minute,
            zone_price_unlock=zone.value.price_unlock,
            zone_default_deposit=zone.value.default_deposit,
            surge=coeffs.surge,
            low_charge_discount=coeffs.low_charge_discount,
            has_subscription=user.value.has_subscribtion,
            trusted=user.value.trusted,
            total_debt=user.value.total_debt,
            free_ride_seconds=coeffs.free_ride_seconds,
            zone_source=zone.source,
            user_source=user.source,
            configs_source=configs.source,
        ),
    )
    return offer, deps.signer.sign(offer)


async def _recorded_debt(deps: Deps, user_id: str) -> int:
    started = time.monotonic()
    async with deps.pool.acquire() as conn:
        debt = await repo.recorded_debt(conn, user_id)
    if debt <= DEBT_ALLOWED and deps.debt_marks is not None:
        await deps.debt_marks.note_clear(user_id, started)
    return debt


# --- starting a ride --------------------------------------------------------------------------


async def start_ride(deps: Deps, offer: Offer, *, resumed: bool = False) -> Order:
    """Start a ride from a verified offer: reserve, hold the deposit, then activate.

    1. One step claims the offer, the scooter and a ride slot, writes the order as
       ``starting`` and records the hold as owed (due after ``stuck_hold_seconds``:
       if this process dies before step 3, the worker undoes the start).
    2. The deposit is held through payments.
    3. One step activates the order and appends ``order_started``.
    A failed hold rejects the order and frees everything; if the hold may have happened
    (timeout), its release is recorded for the worker.

    A start whose request died is not waited for longer than ``stuck_hold_seconds``:
    when the offer, scooter or ride slot is held by such a start, it is undone here and
    this start goes ahead. ``resumed`` (the retry of a request that died, issue 8 item 5)
    answers the ride the offer already started, or undoes its unconfirmed start at once.
    """
    settings = deps.settings
    order_id = uuid7()
    created_at = created_at_of(order_id)
    status, payment_status = NEW_ORDER
    order = NewOrder(
        id=str(order_id),
        offer_id=str(offer.id),
        user_id=offer.user_id,
        scooter_id=offer.scooter_id,
        zone_id=offer.zone_id,
        status=status,
        payment_status=payment_status,
        price_per_minute=offer.price_per_minute,
        price_unlock=offer.price_unlock,
        deposit=offer.deposit,
        free_ride_seconds=offer.inputs.free_ride_seconds,
        created_at=created_at,
        started_at=created_at,
        version=1,
        pricing=offer.inputs,
    )
    for attempt in (1, 2):
        try:
            async with deps.pool.acquire() as conn:
                await repo.start_ride(
                    conn,
                    order,
                    offer.expires_at,
                    settings.rides.max_active_per_user,
                    settings.payments.stuck_hold_seconds,
                )
            break
        except repo.Refused as refused:
            if resumed and refused.code == "offer_already_used":
                async with deps.pool.acquire() as conn:
                    earlier = await repo.order_of_offer(conn, offer.id)
                if earlier is not None and is_visible(earlier.status):
                    return earlier  # the request that died had started the ride
            if attempt == 2 or not await _undo_dead_starts(deps, offer, resumed=resumed):
                raise refusal_error(
                    refused.code,
                    offer_id=offer.id,
                    scooter_id=offer.scooter_id,
                    user_id=offer.user_id,
                    max_rides=settings.rides.max_active_per_user,
                ) from None
    try:
        await deps.services.hold(offer.user_id, str(order_id), offer.deposit)
    except ServiceError as exc:
        await reject_start(deps.pool, order_id, created_at, release=exc.ambiguous)
        if exc.declined and not exc.ambiguous:  # a definite refusal of the card: 402
            raise PaymentDeclined("payments declined the deposit hold") from exc
        raise DependencyUnavailable(
            "payments", f"could not hold the deposit: {exc.reason}"
        ) from exc
    async with deps.pool.acquire() as conn:
        started = await repo.activate_ride(conn, order_id, created_at, utcnow())
    if started is None:  # the worker undid this start while the hold was slow
        raise DependencyUnavailable("payments", "holding the deposit took too long")
    deps.activated.add(order_id, started, offer.inputs)
    return started


async def _undo_dead_starts(deps: Deps, offer: Offer, *, resumed: bool) -> bool:
    """Undo the unconfirmed starts in this offer's way whose requests died; True if any.

    A start is presumed dead after ``stuck_hold_seconds`` (a live hold takes at most two
    payment timeouts); a ``resumed`` retry knows that its offer's start died, so it does
    not wait for that one.
    Undoing is safe even if that request still lives: its activation then fails and the
    hold it may have placed is released by the worker.
    """
    stale = float(deps.settings.payments.stuck_hold_seconds)
    async with deps.pool.acquire() as conn:
        dead = await repo.stale_starts(
            conn, offer.id, offer.scooter_id, offer.user_id, 0.0 if resumed else stale, stale
        )
    undone = False
    for row in dead:
        if await reject_start(deps.pool, row["id"], row["created_at"], release=True):
            log.warning("undid start %s: its request died before its hold", row["id"])
            undone = True
    return undone


async def reject_start(
    pool: asyncpg.Pool, order_id: uuid.UUID, created_at: datetime, *, release: bool
) -> bool:
    """Undo a start whose hold failed; records a release when the hold may exist."""
    async with pool.acquire() as conn:
        return await repo.reject_start(conn, order_id, created_at, release)


# --- finishing a ride -------------------------------------------------------------------------


async def finish_ride(
    deps: Deps,
    order_id: uuid.UUID,
    track: Sequence[TrackPoint],
    actor: Principal | None = None,
    *,
    ended_at: datetime | None = None,
    reason: str | None = None,
) -> OrderAnswer:
    """End a ride (idempotent) and charge it, as of now or of ``ended_at`` (an abandoned
    ride, or support's end of it, docs/rides-gone-wrong.md), at most the ride cost cap;
    answers the order with its receipt.

    ``actor`` (None: trusted internal caller) must be the ride's rider or ``support``;
    anyone else gets OrderNotFound, as for a ride that does not exist. A support actor
    ending someone else's ride (or any ride with a ``reason``: ``POST /orders/{id}/end``)
    is a force-end, recorded in ``order_actions`` with who did it and why, in the same
    transaction as the end (ADR 0006). An ``ended_at`` an actor gives is refused before
    the start (EndBeforeStart) or in the future (EndInFuture); a ride already ended
    answers its stored result whatever ``ended_at`` says.

    The end is committed first, with the charge recorded as owed, so the rider can always
    stop; the charge is then tried once here and retried by the worker if it fails.
    The end only applies to an ``active`` ride, so of concurrent finishes exactly one
    ends it and charges; the others return the stored result. A ride this process
    activated is decided from its activation snapshot without a read (``ActivatedRides``);
    the end then also requires the row to still have that snapshot's terms, else the ride
    is read and decided again.
    """
    settings = deps.settings
    if len(track) > settings.rides.track_max_points:
        raise TrackTooLong(f"a track has at most {settings.rides.track_max_points} points")
    created_at = created_at_of(order_id)
    activated = deps.activated.take(order_id)  # this process started it: no read
    if ended_at is not None:  # an end as of a given time is checked against the row's start
        activated = None
    async with deps.pool.acquire() as conn:
        found = activated or await repo.order_with_receipt_inputs(conn, order_id, created_at)
        if found is None or not is_visible(found[0].status):
            raise OrderNotFound(f"no ride {order_id}")
        order, inputs = found
        terms = order if activated is not None else None
        if actor is not None and not actor.may_read(order.user_id):
            raise OrderNotFound(f"no ride {order_id}")
        forced = actor is not None and (actor.sub != order.user_id or reason is not None)
        forced_by = actor if forced else None
        if not is_riding(order.status):
            return answer_of(order, inputs)
        now = utcnow()
        if actor is not None and ended_at is not None:
            operator_end(order.started_at, ended_at, now)  # refuses before start, in future
        decision = decide_finish(
            started_at=order.started_at,
            finished_at=ended_at or now,
            price_per_minute=order.price_per_minute,
            price_unlock=order.price_unlock,
            free_ride_seconds=order.free_ride_seconds,
            max_cost=settings.rides.max_cost,
            max_charged_seconds=settings.rides.max_charged_seconds,
        )
        charge_due = settings.external.payment_timeout_seconds * 2
        distance = track_distance_meters(track, settings.rides.track_max_speed_kmh)
        track_json = repo.encode_json(track) if track else None
        if forced_by is None:
            ended = await repo.finish_ride(
                conn, order_id, created_at, decision, distance, track_json, charge_due, terms
            )
        else:
            async with conn.transaction():
                ended = await repo.finish_ride(
                    conn,
                    order_id,
                    created_at,
                    decision,
                    distance,
                    track_json,
                    charge_due,
                    terms,
                )
                if ended is not None:
                    await repo.record_order_action(
                        conn,
                        order_id,
                        created_at,
                        "force_end",
                        forced_by.sub,
                        forced_by.roles,
                        reason,
                    )
        if ended is None and activated is None:  # a concurrent finish ended it first
            stored = await repo.order_with_receipt_inputs(conn, order_id, created_at)
            assert stored is not None
            return answer_of(*stored)
    if ended is None:  # ended meanwhile, or the row's terms are not the snapshot's: read it
        return await finish_ride(deps, order_id, track, actor, ended_at=ended_at, reason=reason)
    total = decision.total_amount
    try:
        await deps.services.clear(ended.user_id, ended.id, total)
    except ServiceError as exc:
        # once per finish while payments is down: bounded by shared.infra.logs
        log.warning(
            "charge deferred to the worker",
            extra={"service": exc.service, "order_id": str(order_id), "error": exc.reason},
        )
        return answer_of(ended, inputs)
    settled = await settle_charge(deps.pool, order_id, created_at, decide_settle(total))
    return answer_of(settled or ended, inputs)


async def settle_charge(
    pool: asyncpg.Pool,
    order_id: uuid.UUID,
    created_at: datetime,
    decision: SettleDecision,
    *,
    debt_marks: DebtMarks | None = None,
    user_id: str = "",
) -> Order | None:
    """Record the outcome of an owed charge as ``shared.lifecycle.decide_settle`` decided
    it: charged (released for 0) or, when payments declined it, the rider's debt.

    A charge that became debt leaves the deposit held at payments: in the same
    transaction its release is recorded as owed (``release_debt_hold``, the whole
    deposit), and the worker retries it until payments confirms (docs/operator-api.md).
    The rider (``user_id``) is marked ``check`` in ``debt_marks`` before that transaction
    and again after it, so no offer skips the debt read on an older ``clear`` mark
    (``command_api.debt_marks``).
    Returns the settled order, or None if another process settled it first.
    """
    if decision.payment_to != PaymentStatus.DEBT:
        async with pool.acquire() as conn:
            return await repo.settle_charge(conn, order_id, created_at, decision)
    if debt_marks is not None:
        await debt_marks.note_debt(user_id)
    settled = await _record_debt(pool, order_id, created_at, decision)
    if debt_marks is not None:
        await debt_marks.note_debt(user_id)
    return settled


async def _record_debt(
    pool: asyncpg.Pool, order_id: uuid.UUID, created_at: datetime, decision: SettleDecision
) -> Order | None:
    async with pool.acquire() as conn, conn.transaction():
        settled = await repo.settle_charge(conn, order_id, created_at, decision)
        if settled is not None and settled.deposit > 0:
            await repo.owe_operation(
                conn,
                order_id,
                OperationKind.RELEASE_DEBT_HOLD,
                created_at,
                settled.user_id,
                settled.deposit,
            )
        return settled
