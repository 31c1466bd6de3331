"""The write side's worker: owed payment operations and scheduled maintenance.

``python -m command_api.worker``. Several may run at once: operations are leased with
``FOR UPDATE SKIP LOCKED`` and every payment call is idempotent per (order, operation).

- ``hold`` due: a start never confirmed its hold in time → the start is undone and
  the hold released.
- ``charge`` due: the charge is retried with exponential backoff. When a call does not
  answer ok, payments is asked what became of the operation (by its idempotency key), and
  only a definite outcome is recorded (``shared.lifecycle.decide_settle``): done →
  charged; declined on try ``settings.payments.max_attempts`` or later → the rider's
  debt; unknown (late, unreachable, in progress) → still owed, however many tries.
- ``release`` due: the hold of a rejected start is released (a charge of 0), retried
  until payments confirms it, by its answer or by the lookup.
- ``release_debt_hold`` due: the hold left behind by a charge that became debt is
  released (``command_api.operator.release_debt_hold``), retried until done.
- abandoned rides (active past ``settings.rides.abandoned_after_seconds``) are ended as
  of that limit and charged, capped (docs/rides-gone-wrong.md); in the same round,
  refunds left pending by an ambiguous payments failure are asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import asyncpg

from command_api import metrics, operator, rides
from command_api import repository as repo
from command_api.composition import open_deps
from command_api.external import ExternalServices, ServiceError
from migrations.maintenance import prune, run_partition_maintenance
from shared.infra.failures import RetryLog, explain_postgres, explained_exit
from shared.infra.logs import configure_logging
from shared.lifecycle import (
    OperationKind,
    PaymentOutcome,
    PaymentStatus,
    decide_settle,
    payment_outcome,
)
from shared.ride_rules import abandoned_cutoff, abandoned_end
from shared.settings import Settings, get_settings

log = logging.getLogger("worker")
BATCH = 100
# how often the worker looks for abandoned rides; when it ends one does not change what
# the ride costs (it ends as of the limit), only how long the app still shows it active
ABANDONED_CHECK_SECONDS = 10.0


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Delay before the next try after ``attempts`` failed ones."""
    delay = settings.payments.retry_base_seconds * 2 ** max(attempts - 1, 0)
    return float(min(delay, settings.payments.retry_max_seconds))


async def process_operation(deps: rides.Deps, op: asyncpg.Record) -> None:
    """Try one leased payment operation once and record what happened."""
    settings = deps.settings
    order_id, kind, amount = op["order_id"], op["kind"], op["amount"]
    created_at, user_id = op["order_created_at"], op["user_id"]
    if kind == OperationKind.HOLD:
        undone = await rides.reject_start(deps.pool, order_id, created_at, release=True)
        metrics.payment_attempts.labels(kind, "undone" if undone else "noop").inc()
        return
    if kind == OperationKind.RELEASE_DEBT_HOLD:
        try:
            released = await operator.release_debt_hold(deps, op)
        except ServiceError as exc:
            metrics.payment_attempts.labels(kind, "retry").inc()
            async with deps.pool.acquire() as conn:
                await repo.reschedule_operation(
                    conn, order_id, kind, backoff_seconds(settings, op["attempts"]), str(exc)
                )
            return
        metrics.payment_attempts.labels(kind, released).inc()
        return
    attempts = op["attempts"]
    outcome, reason = await clear_outcome(deps.services, user_id, str(order_id), amount)
    if kind == OperationKind.CHARGE:
        decision = decide_settle(
            amount, outcome, attempts=attempts, max_attempts=settings.payments.max_attempts
        )
        if decision is not None:
            await rides.settle_charge(
                deps.pool,
                order_id,
                created_at,
                decision,
                debt_marks=deps.debt_marks,
                user_id=user_id,
            )
            if decision.payment_to == PaymentStatus.DEBT:
                metrics.payment_attempts.labels(kind, "debt").inc()
                log.warning(
                    "charge of %s declined on try %d: debt %d (%s)",
                    order_id,
                    attempts,
                    amount,
                    reason,
                )
            else:
                metrics.payment_attempts.labels(kind, "ok").inc()
            return
    elif outcome is PaymentOutcome.DONE:
        metrics.payment_attempts.labels(kind, "ok").inc()
        async with deps.pool.acquire() as conn:
            await repo.finish_payment_operation(conn, order_id, kind)
        return
    # a decline before the last try is retried like an unknown outcome, counted apart
    retry = "declined" if outcome is PaymentOutcome.DECLINED else "retry"
    metrics.payment_attempts.labels(kind, retry).inc()
    if attempts >= settings.payments.max_attempts and outcome is PaymentOutcome.UNKNOWN:
        log.warning("%s of %s still unsettled after %d tries: %s", kind, order_id, attempts, reason)
    async with deps.pool.acquire() as conn:
        await repo.reschedule_operation(
            conn, order_id, kind, backoff_seconds(settings, attempts), reason
        )


async def clear_outcome(
    services: ExternalServices, user_id: str, order_id: str, amount: int
) -> tuple[PaymentOutcome, str]:
    """Charge ``amount`` of the order (0 releases its hold) and tell what became of it,
    with the reason when it is not done. A call that does not answer ok is followed by a
    lookup of the operation at payments (by its idempotency key), so a charge that landed
    while its answer was lost or late is known as done, and a decline is only believed
    when nothing landed (``shared.lifecycle.payment_outcome``)."""
    try:
        await services.clear(user_id, order_id, amount)
    except ServiceError as exc:
        failure = exc
    else:
        return PaymentOutcome.DONE, "ok"
    try:
        found = await services.payment_operation(order_id, "charge")
    except ServiceError as exc:
        return PaymentOutcome.UNKNOWN, f"{failure}; lookup failed: {exc.reason}"
    outcome = payment_outcome(
        declined=failure.declined, found=found.state, found_amount=found.amount, amount=amount
    )
    return outcome, f"{failure}; payments has it {found.state} ({found.amount})"


async def process_due_operations(deps: rides.Deps) -> int:
    """Lease and try every due operation (up to a batch); returns how many were tried."""
    external = deps.settings.external
    # one try: the call, then the lookup (a GET, retried once), with room to record it
    lease = external.payment_timeout_seconds + 2 * external.http_timeout_seconds + 1
    async with deps.pool.acquire() as conn:
        due = await repo.claim_due_operations(conn, BATCH, lease)
    results = await asyncio.gather(
        *(process_operation(deps, op) for op in due), return_exceptions=True
    )
    for op, result in zip(due, results, strict=True):
        if isinstance(result, Exception):
            log.error("payment operation %s/%s failed: %r", op["order_id"], op["kind"], result)
    return len(due)


async def end_abandoned_rides(deps: rides.Deps) -> int:
    """End every ride active longer than ``rides.abandoned_after_seconds``, as of that
    limit after its start, and charge it (capped); returns how many were found.

    docs/rides-gone-wrong.md; the decisions are ``shared.ride_rules``'.
    """
    limit = deps.settings.rides.abandoned_after_seconds
    async with deps.pool.acquire() as conn:
        found = await repo.abandoned_rides(conn, abandoned_cutoff(rides.utcnow(), limit), BATCH)
    for order_id, started_at in found:
        ended = await rides.finish_ride(
            deps, order_id, (), ended_at=abandoned_end(started_at, limit)
        )
        log.warning("ended abandoned ride %s (started %s): %s", order_id, started_at, ended.status)
        metrics.abandoned_rides.inc()
    return len(found)


async def maintain(pool: asyncpg.Pool, settings: Settings) -> None:
    """Partition premake/retention and pruning of expired bookkeeping rows."""
    async with pool.acquire() as conn:
        await run_partition_maintenance(conn, settings)
        await prune(conn, settings)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Work until ``stop`` is set."""
    async with open_deps(settings, pool_size=(1, 4)) as deps:
        await _work(deps, stop)


async def _work(deps: rides.Deps, stop: asyncio.Event) -> None:
    """The worker's loop: maintenance when due, then owed payment operations."""
    pool, settings = deps.pool, deps.settings
    next_maintenance = next_abandoned_check = 0.0
    retry_log = RetryLog(log, "payment operations")
    while not stop.is_set():
        if time.monotonic() >= next_maintenance:
            try:
                await maintain(pool, settings)
            except (OSError, asyncpg.PostgresError) as exc:
                reason = explain_postgres(exc, settings.db.url) or repr(exc)
                log.error("maintenance failed, retrying next period: %s", reason)
            next_maintenance = time.monotonic() + settings.maintenance.interval_seconds
        if time.monotonic() >= next_abandoned_check:
            try:
                await end_abandoned_rides(deps)
            except (OSError, asyncpg.PostgresError) as exc:
                reason = explain_postgres(exc, settings.db.url) or repr(exc)
                log.error("ending abandoned rides failed, retrying: %s", reason)
            try:  # refunds left pending by an ambiguous payments failure (operator.py)
                await operator.retry_pending_refunds(deps)
            except (OSError, asyncpg.PostgresError) as exc:
                reason = explain_postgres(exc, settings.db.url) or repr(exc)
                log.error("retrying pending refunds failed, retrying: %s", reason)
            next_abandoned_check = time.monotonic() + ABANDONED_CHECK_SECONDS
        try:
            tried = await process_due_operations(deps)
            retry_log.succeeded()
        except (OSError, asyncpg.PostgresError) as exc:
            retry_log.failed(explain_postgres(exc, settings.db.url) or repr(exc))
            tried = 0
        if tried < BATCH:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.maintenance.worker_poll_seconds)


def main() -> None:
    settings = get_settings()
    configure_logging(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    with explained_exit("worker", settings.db.url, settings.redis.url):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
