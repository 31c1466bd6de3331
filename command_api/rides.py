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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from command_api import repository as repo
from command_api.external import ExternalServices, ServiceError
from shared.domain import (
    Offer,
    OrderStatus,
    PaymentStatus,
    PricingInputs,
    TrackPoint,
)
from shared.errors import (
    DependencyUnavailable,
    OfferAlreadyUsed,
    OrderNotFound,
    ScooterBusy,
    TooManyActiveRides,
    TrackTooLong,
    UserHasDebt,
)
from shared.events import (
    OrderFinished,
    OrderSnapshot,
    OrderStarted,
    PaymentSettled,
)
from shared.ids import created_at_of, uuid7
from shared.offer_token import OfferSigner
from shared.pricing import is_free_ride, quote, ride_cost, track_distance_meters
from shared.settings import Settings

log = logging.getLogger("rides")


@dataclass(frozen=True, slots=True)
class Deps:
    """What the commands need; built once by the app's lifespan (or by a test)."""

    pool: asyncpg.Pool
    services: ExternalServices
    signer: OfferSigner
    settings: Settings


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- offers -----------------------------------------------------------------------------------


async def create_offer(deps: Deps, user_id: str, scooter_id: str) -> tuple[Offer, str]:
    """Price a personal offer; returns it and its signed token. Writes nothing."""
    services = deps.services
    scooter_task = asyncio.ensure_future(services.scooter(scooter_id))
    user_task = asyncio.ensure_future(services.user(user_id))
    configs_task = asyncio.ensure_future(services.configs())
    try:
        scooter = await scooter_task
        user, configs = await user_task, await configs_task
    finally:
        for task in (user_task, configs_task):
            task.cancel()
    zone = await services.zone(scooter.zone_id)
    coeffs = configs.value
    price = quote(scooter, zone.value, user.value, coeffs)
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
        expires_at=now + timedelta(seconds=deps.settings.offer_ttl_seconds),
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


# --- starting a ride --------------------------------------------------------------------------


async def start_ride(deps: Deps, offer: Offer) -> OrderSnapshot:
    """Start a ride from a verified offer: reserve, hold the deposit, then activate.

    1. One transaction claims the offer, the scooter and a ride slot, writes the order
       as ``starting`` and records the hold as owed (due after ``stuck_hold_seconds``:
       if this process dies before step 3, the worker undoes the start).
    2. The deposit is held through payments.
    3. One transaction activates the order and appends ``order_started``.
    A failed hold rejects the order and frees everything; if the hold may have happened
    (timeout), its release is recorded for the worker.
    """
    settings = deps.settings
    order_id = uuid7()
    created_at = created_at_of(order_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await repo.claim_offer(conn, offer.id, order_id, offer.expires_at):
            raise OfferAlreadyUsed(f"offer {offer.id} has already started a ride")
        if not await repo.occupy_scooter(
            conn, offer.scooter_id, order_id, created_at, offer.user_id
        ):
            raise ScooterBusy(f"scooter {offer.scooter_id} is already in a ride")
        slot = await repo.take_ride_slot(conn, offer.user_id, settings.max_active_rides_per_user)
        if slot == "debt":
            raise UserHasDebt(f"user {offer.user_id} has an unpaid debt")
        if slot == "limit":
            raise TooManyActiveRides(
                f"user {offer.user_id} already has {settings.max_active_rides_per_user}"
                " active ride(s)"
            )
        await repo.insert_order(
            conn,
            {
                "id": order_id,
                "created_at": created_at,
                "offer_id": offer.id,
                "user_id": offer.user_id,
                "scooter_id": offer.scooter_id,
                "zone_id": offer.zone_id,
                "price_per_minute": offer.price_per_minute,
                "price_unlock": offer.price_unlock,
                "deposit": offer.deposit,
                "free_ride_seconds": offer.inputs.free_ride_seconds,
                "pricing": repo.encode_json(offer.inputs),
            },
        )
        await repo.add_payment_operation(
            conn,
            order_id,
            "hold",
            created_at,
            offer.user_id,
            offer.deposit,
            settings.stuck_hold_seconds,
        )
    try:
        await deps.services.hold(offer.user_id, str(order_id), offer.deposit)
    except ServiceError as exc:
        await reject_start(deps.pool, order_id, created_at, offer.user_id, release=exc.ambiguous)
        raise DependencyUnavailable(
            "payments", f"could not hold the deposit: {exc.reason}"
        ) from exc
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await repo.activate_order(conn, order_id, created_at, utcnow())
        if row is None:  # the worker undid this start while the hold was slow
            raise DependencyUnavailable("payments", "holding the deposit took too long")
        await repo.finish_payment_operation(conn, order_id, "hold")
        snapshot = repo.order_snapshot(row)
        await repo.append_event(conn, OrderStarted(order=snapshot))
    return snapshot


async def reject_start(
    pool: asyncpg.Pool, order_id: uuid.UUID, created_at: datetime, user_id: str, *, release: bool
) -> bool:
    """Undo a start whose hold failed; records a release when the hold may exist."""
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.reject_order(conn, order_id, created_at)
        await repo.finish_payment_operation(conn, order_id, "hold", "gave_up")
        if row is not None and release:
            await repo.add_payment_operation(conn, order_id, "release", created_at, user_id, 0, 0)
    return row is not None


# --- finishing a ride -------------------------------------------------------------------------


async def finish_ride(
    deps: Deps, order_id: uuid.UUID, track: Sequence[TrackPoint], acting_user: str | None = None
) -> OrderSnapshot:
    """End a ride (idempotent) and charge it.

    The end is committed first, with the charge recorded as owed, so the rider can always
    stop; the charge is then tried once here and retried by the worker if it fails.
    A repeated or concurrent finish waits on the order's row lock and returns the
    stored result without charging again.
    """
    settings = deps.settings
    if len(track) > settings.track_max_points:
        raise TrackTooLong(f"a track has at most {settings.track_max_points} points")
    created_at = created_at_of(order_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await repo.lock_order(conn, order_id, created_at)
        if row is None or row["status"] in (OrderStatus.STARTING, OrderStatus.REJECTED):
            raise OrderNotFound(f"no ride {order_id}")
        if acting_user is not None and row["user_id"] != acting_user:
            raise OrderNotFound(f"no ride {order_id}")
        if row["status"] != OrderStatus.ACTIVE:
            return repo.order_snapshot(row)
        finished_at = utcnow()
        seconds = max(0, int((finished_at - row["started_at"]).total_seconds()))
        cancelled = is_free_ride(seconds, row["free_ride_seconds"])
        total = ride_cost(
            seconds, row["price_per_minute"], row["price_unlock"], row["free_ride_seconds"]
        )
        ended = await repo.end_ride(
            conn,
            {
                "id": order_id,
                "created_at": created_at,
                "status": OrderStatus.CANCELLED if cancelled else OrderStatus.FINISHED,
                "finished_at": finished_at,
                "duration_seconds": seconds,
                "total_amount": total,
                "distance_meters": track_distance_meters(track),
                "track": repo.encode_json(track) if track else None,
            },
        )
        summary = await repo.count_finished_ride(conn, row["user_id"], rode=not cancelled)
        # due only after this process had its own try, so the worker does not race it
        await repo.add_payment_operation(
            conn,
            order_id,
            "charge",
            created_at,
            row["user_id"],
            total,
            settings.payment_timeout_seconds * 2,
        )
        snapshot = repo.order_snapshot(ended)
        await repo.append_event(
            conn, OrderFinished(order=snapshot, summary=repo.summary_snapshot(summary))
        )
    try:
        await deps.services.clear(snapshot.user_id, snapshot.id, total)
    except ServiceError as exc:
        log.warning("charge of %s deferred to the worker: %s", order_id, exc)
        return snapshot
    settled = await settle_charge(deps.pool, order_id, created_at, snapshot.user_id, total)
    return settled or snapshot


async def settle_charge(
    pool: asyncpg.Pool,
    order_id: uuid.UUID,
    created_at: datetime,
    user_id: str,
    amount: int,
    *,
    gave_up: bool = False,
) -> OrderSnapshot | None:
    """Record a confirmed charge (or, when the retries ``gave_up``, the user's debt).

    Returns the settled order, or None if another process settled it first.
    """
    if gave_up:
        status = PaymentStatus.DEBT
    elif amount == 0:
        status = PaymentStatus.RELEASED
    else:
        status = PaymentStatus.CHARGED
    async with pool.acquire() as conn, conn.transaction():
        state = "gave_up" if gave_up else "done"
        if not await repo.finish_payment_operation(conn, order_id, "charge", state):
            return None
        row = await repo.settle_order(conn, order_id, created_at, status)
        if row is None:
            return None
        summary = await repo.record_payment_outcome(
            conn,
            user_id,
            charged=0 if gave_up else amount,
            debt=amount if gave_up else 0,
            status=status,
        )
        snapshot = repo.order_snapshot(row)
        await repo.append_event(
            conn, PaymentSettled(order=snapshot, summary=repo.summary_snapshot(summary))
        )
    return snapshot


async def read_order(pool: asyncpg.Pool, order_id: uuid.UUID) -> OrderSnapshot:
    """The order as stored (the command side's own read, for replies)."""
    async with pool.acquire() as conn:
        row = await repo.get_order(conn, order_id, created_at_of(order_id))
    if row is None or row["status"] in (OrderStatus.STARTING, OrderStatus.REJECTED):
        raise OrderNotFound(f"no ride {order_id}")
    return repo.order_snapshot(row)
