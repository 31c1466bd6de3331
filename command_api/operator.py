"""Operator commands for rides gone wrong (role ``support``; docs/operator-api.md).

Ending a ride on the rider's behalf is a finish (``rides.finish_ride`` with the end
time and a reason); this module holds the rest: refunds, settling a rider's debt, and
the worker's release of the hold left behind by a charge that became debt. Every act
is recorded in ``order_actions`` with its actor, time and reason, and every change of
an order appends its outbox event, so the query side shows it like any ride step.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
import msgspec

from command_api import repository as repo
from command_api.external import ExternalServices, ServiceError
from command_api.rides import Deps
from shared.errors import (
    DependencyUnavailable,
    IdempotencyKeyReused,
    InvalidRefund,
    OrderNotCharged,
    OrderNotFound,
    RefundExceedsCharge,
    UserNotFound,
    echo,
)
from shared.events import DEBT_SETTLED, HOLD_RELEASED, ORDER_REFUNDED
from shared.ids import created_at_of
from shared.infra.auth import SUPPORT, Principal
from shared.lifecycle import (
    OperationKind,
    OperationState,
    PaymentOutcome,
    PaymentStatus,
    decide_settle_debt,
    is_visible,
    payment_outcome,
)
from shared.receipt import Receipt, receipt_of
from shared.ride_rules import check_refund

log = logging.getLogger("operator")


class RefundAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /orders/{id}/refunds``: this refund's ``amount``, what the order's refunds
    add up to now (``refunded_total``) and its receipt; money in currency units."""

    order_id: str
    amount: int
    refunded_total: int
    receipt: Receipt


class SettleAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /users/{id}/debt/settle``: the orders settled by this call and the debt left."""

    user_id: str
    settled: list[str]
    debt: int


# --- refunds ----------------------------------------------------------------------------------


async def refund(
    deps: Deps,
    order_id: uuid.UUID,
    amount: int,
    reason: str,
    refund_key: str,
    actor: Principal,
) -> RefundAnswer:
    """Refund ``amount`` of an order's charge through payments, once per ``refund_key``.

    1. Under the order's row lock: refuse (InvalidRefund, OrderNotFound,
       OrderNotCharged, RefundExceedsCharge — ``shared.ride_rules.check_refund``, where
       pending refunds count) or record the refund as ``pending``. A key seen before
       with the same amount goes on from where it was; with another amount it is
       IdempotencyKeyReused.
    2. Payments refunds it (refund key = ``refund_key``, idempotent there).
    3. One transaction confirms it, lowers the rider's ``total_charged``, records the
       act and appends ``order_refunded``.
    Payments down: DependencyUnavailable; the pending refund is dropped unless the
    call may have taken effect (then a retry with the same key, or the worker, completes
    it). A call that may have taken effect (timeout, reset, 5xx) is followed by a lookup
    of the refund at payments by its key (:func:`looked_up`): found done with this
    amount, it is confirmed as if payments had answered ok.
    """
    if amount <= 0:  # refused before anything is read
        raise InvalidRefund(f"a refund must be positive, got {amount}")
    created_at = created_at_of(order_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        order = await repo.lock_order(conn, order_id, created_at)
        if order is None or not is_visible(order.status):
            raise OrderNotFound(f"no ride {echo(order_id)}")
        refunds = await repo.refunds_of(conn, order_id)
        earlier = refunds.get(refund_key)
        if earlier is not None and earlier.amount != amount:
            raise IdempotencyKeyReused(f"refund {refund_key!r} was for {earlier.amount}")
        if earlier is None:
            if order.payment_status != PaymentStatus.CHARGED:
                raise OrderNotCharged(
                    f"order {order_id} is {order.payment_status}: nothing was charged to refund"
                )
            check_refund(order.total_amount or 0, sum(r.amount for r in refunds.values()), amount)
            await repo.reserve_refund(conn, order, refund_key, amount, reason, actor.sub)
    if earlier is None or earlier.state == "pending":
        await _refund_at_payments(
            deps, order_id, order.user_id, amount, refund_key, first_try=earlier is None
        )
        await _confirm_refund(deps.pool, order_id, refund_key, amount, reason, actor)
    async with deps.pool.acquire() as conn:
        found = await repo.order_with_receipt_inputs(conn, order_id, created_at)
    assert found is not None
    receipt = receipt_of(*found)
    assert receipt is not None  # a charged order has ended
    return RefundAnswer(
        order_id=str(order_id), amount=amount, refunded_total=receipt.refunded, receipt=receipt
    )


async def _confirm_refund(
    pool: asyncpg.Pool,
    order_id: uuid.UUID,
    refund_key: str,
    amount: int,
    reason: str,
    actor: Principal,
) -> None:
    """Payments refunded it: confirm, lower ``total_charged``, record, append (once)."""
    created_at = created_at_of(order_id)
    async with pool.acquire() as conn, conn.transaction():
        if await repo.confirm_refund(conn, order_id, refund_key):
            await repo.apply_operator_change(
                conn,
                order_id,
                created_at,
                ORDER_REFUNDED,
                total_charged_delta=-amount,
                change_summary=True,
            )
            await repo.record_order_action(
                conn, order_id, created_at, "refund", actor.sub, actor.roles, reason, amount
            )


async def retry_pending_refunds(deps: Deps, limit: int = 100) -> int:
    """The worker's part of refunds: a refund left ``pending`` longer than a payments
    call can take (its request timed out ambiguously and was never retried, or its
    process died) is asked of payments again with its refund key, and confirmed once
    payments answers (payments refunds once per key). Returns how many were tried."""
    older_than = deps.settings.external.payment_timeout_seconds * 2 + 1
    async with deps.pool.acquire() as conn:
        stale = await repo.stale_refunds(conn, older_than, limit)
    for row in stale:
        order_id, key = row.order_id, row.refund_key
        try:
            await deps.services.refund(row.user_id, str(order_id), row.amount, key)
        except ServiceError as exc:
            outcome, why = await looked_up(
                deps.services, exc, str(order_id), "refund", row.amount, key
            )
            if outcome is not PaymentOutcome.DONE:
                log.warning("pending refund %s of %s: not settled yet: %s", key, order_id, why)
                continue
            log.warning("pending refund %s of %s: %s", key, order_id, why)
        actor = Principal(row.actor, frozenset({SUPPORT}))
        await _confirm_refund(deps.pool, order_id, key, row.amount, row.reason, actor)
    return len(stale)


async def _refund_at_payments(
    deps: Deps,
    order_id: uuid.UUID,
    user_id: str,
    amount: int,
    refund_key: str,
    *,
    first_try: bool,
) -> None:
    """Refund at payments; returns once payments refunded it (answered ok, or its lookup
    finds the refund done). ``first_try``: no earlier call with this key was made (a
    retry of a pending refund keeps its reservation while payments is down: the earlier
    call may have landed)."""
    try:
        await deps.services.refund(user_id, str(order_id), amount, refund_key)
    except ServiceError as exc:
        # payments' ledger disagrees with ours (not: another call with this key in progress)
        refused = exc.reason.startswith("HTTP 4") and not exc.ambiguous
        if exc.ambiguous:
            outcome, why = await looked_up(
                deps.services, exc, str(order_id), "refund", amount, refund_key
            )
            if outcome is PaymentOutcome.DONE:  # it landed; the answer was late or lost
                log.warning("refund %s of %s: %s", refund_key, order_id, why)
                return
        elif first_try or refused:  # payments certainly did not refund: the reservation goes
            async with deps.pool.acquire() as conn:
                await repo.forget_refund(conn, order_id, refund_key)
        if refused:
            log.error("payments refused refund %s of %s: %s", refund_key, order_id, exc)
            raise RefundExceedsCharge(f"payments refused the refund: {exc.reason}") from exc
        raise DependencyUnavailable(
            "payments", f"could not refund: {exc.reason}; retry with the same Idempotency-Key"
        ) from exc


async def looked_up(
    services: ExternalServices,
    failure: ServiceError,
    order_id: str,
    operation: str,
    amount: int,
    refund_key: str = "",
) -> tuple[PaymentOutcome, str]:
    """What became of a payments call of ``operation`` (``refund`` with ``refund_key``,
    ``release``) for ``amount`` (currency units) that failed with ``failure``: payments'
    lookup by its idempotency key (``GET /payment-operation``) decides, as for the charge
    (``shared.lifecycle.payment_outcome``, ADR 0002): DONE when payments has it done with
    ``amount``; otherwise UNKNOWN (the lookup failed, ``in_progress``, ``absent``: an
    earlier call may still land, or ``done`` with another amount). Never DECLINED: refunds
    and releases are not declined. Returns the outcome and a one-line reason."""
    try:
        found = await services.payment_operation(order_id, operation, refund_key)
    except ServiceError as exc:
        return PaymentOutcome.UNKNOWN, f"{failure}; lookup failed: {exc.reason}"
    outcome = payment_outcome(
        declined=False, found=found.state, found_amount=found.amount, amount=amount
    )
    return outcome, f"{failure}; payments has it {found.state} ({found.amount})"


# --- settling a debt --------------------------------------------------------------------------


async def settle_debt(deps: Deps, user_id: str, reason: str, actor: Principal) -> SettleAnswer:
    """Charge each of the rider's orders whose charge became debt (``clear``, idempotent
    per order at payments), then, per order, in one transaction: ``debt → charged``
    (``shared.lifecycle.decide_settle_debt``), the gave-up charge done, a release of
    the hold still owed dropped (the clear released what was left of it), the act
    recorded and ``debt_settled`` appended.

    Raises UserNotFound for a rider never seen, DependencyUnavailable when payments
    fails (the orders charged before it stay settled; a retry settles the rest).
    """
    async with deps.pool.acquire() as conn:
        if not await repo.has_summary(conn, user_id):
            raise UserNotFound(f"no rider {echo(user_id)}")
        debts = await repo.debts_of(conn, user_id)
    settled: list[str] = []
    for debt in debts:
        try:
            await deps.services.clear(user_id, str(debt.order_id), debt.amount)
        except ServiceError as exc:
            raise DependencyUnavailable(
                "payments", f"could not charge the debt of {debt.order_id}: {exc.reason}"
            ) from exc
        if await _record_settled(deps.pool, debt, reason, actor):
            settled.append(str(debt.order_id))
    async with deps.pool.acquire() as conn:
        left = await repo.recorded_debt(conn, user_id)
    return SettleAnswer(user_id=user_id, settled=settled, debt=left)


async def _record_settled(
    pool: asyncpg.Pool, debt: repo.Debt, reason: str, actor: Principal
) -> bool:
    try:
        return await _settled_in_one_transaction(pool, debt, reason, actor)
    except _NotDebt:  # not debt after all: everything was rolled back
        return False


async def _settled_in_one_transaction(
    pool: asyncpg.Pool, debt: repo.Debt, reason: str, actor: Principal
) -> bool:
    decision = decide_settle_debt(debt.amount)
    async with pool.acquire() as conn, conn.transaction():
        closed = await repo.close_debt(
            conn, debt.order_id, OperationKind.CHARGE, decision.operation_state
        )
        if not closed:
            return False  # a concurrent settle recorded it
        await repo.finish_payment_operation(
            conn, debt.order_id, OperationKind.RELEASE_DEBT_HOLD, OperationState.GAVE_UP
        )
        changed = await repo.apply_operator_change(
            conn,
            debt.order_id,
            debt.created_at,
            DEBT_SETTLED,
            payment_from=decision.payment_from,
            payment_to=decision.payment_to,
            total_charged_delta=decision.total_charged_delta,
            debt_delta=decision.debt_delta,
            change_summary=True,
        )
        if changed is None:
            raise _NotDebt()
        await repo.record_order_action(
            conn,
            debt.order_id,
            debt.created_at,
            "settle_debt",
            actor.sub,
            actor.roles,
            reason,
            debt.amount,
        )
    return True


class _NotDebt(Exception):
    pass


# --- the hold left behind by a debt (the worker) ------------------------------------------------


async def release_debt_hold(deps: Deps, op: asyncpg.Record) -> str:
    """Release the whole hold of an order whose charge became debt (a leased
    ``release_debt_hold`` operation); returns the outcome for the worker's metrics.

    Confirmed: the operation is done, the order's version grows and ``hold_released``
    is appended (its receipt now shows the deposit released). Payments refusing it
    (409: the order was charged meanwhile, its clear released the hold) closes it as
    given up. A call that may have taken effect (timeout, reset, 5xx, a call with its key
    in progress) is followed by a lookup of the release at payments by its key
    (:func:`looked_up`): found done with the held amount, it is confirmed. Any other
    failure: retried by the worker, raised as ServiceError.
    """
    order_id, created_at, amount = op["order_id"], op["order_created_at"], op["amount"]
    try:
        await deps.services.release(op["user_id"], str(order_id), amount)
    except ServiceError as exc:
        if exc.ambiguous:
            outcome, why = await looked_up(deps.services, exc, str(order_id), "release", amount)
            if outcome is not PaymentOutcome.DONE:
                raise ServiceError("payments", why, ambiguous=True) from exc
            log.warning("release of the hold of %s: %s", order_id, why)
        elif exc.reason != "HTTP 409":
            raise
        else:
            log.warning("release of the hold of %s refused: %s", order_id, exc)
            async with deps.pool.acquire() as conn:
                await repo.finish_payment_operation(
                    conn, order_id, OperationKind.RELEASE_DEBT_HOLD, OperationState.GAVE_UP
                )
            return "refused"
    async with deps.pool.acquire() as conn, conn.transaction():
        if await repo.finish_payment_operation(conn, order_id, OperationKind.RELEASE_DEBT_HOLD):
            await repo.apply_operator_change(conn, order_id, created_at, HOLD_RELEASED)
    return "ok"
