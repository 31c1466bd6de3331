"""The payments stub's ledger: what was held, charged and released for each order.

Hold, clear and release are idempotent per order, refund per (order, refund key) — the
operation's idempotency key: a repeat with the same amount is a no-op, a repeat with
another amount is a conflict. Payments works on one call per idempotency key at a time
(:meth:`Ledger.calling`): a call that arrives while another call with its key is still
being worked on is refused, without effect, as in progress. So once a call with a key
has been answered with a definite decline, no earlier call with that key can still land.
Every other method is synchronous, so a check and its write can never be interleaved
with another request in the single event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal

import msgspec

EntryKind = Literal["hold", "charge", "release", "refund"]
Operation = Literal["hold", "charge", "release", "refund"]  # "charge" is the wire's clear
OperationState = Literal["done", "in_progress", "absent"]


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: EntryKind
    amount: int
    at: datetime
    key: str | None = None  # a refund's refund key


class OrderAccount(msgspec.Struct, kw_only=True):
    """One order's money; also the answer of ``GET /ledger``."""

    order_id: str
    user_id: str
    held: int = 0
    charged: int = 0
    released: int = 0
    refunded: int = 0
    entries: list[LedgerEntry] = msgspec.field(default_factory=list)

    def has(self, kind: EntryKind) -> bool:
        return any(entry.kind == kind for entry in self.entries)

    def record(self, kind: EntryKind, amount: int, key: str | None = None) -> None:
        self.entries.append(LedgerEntry(kind=kind, amount=amount, at=datetime.now(UTC), key=key))

    def refund_of(self, key: str) -> LedgerEntry | None:
        return next((e for e in self.entries if e.kind == "refund" and e.key == key), None)

    def done(self, operation: Operation, key: str = "") -> int | None:
        """The amount of ``operation`` (a refund: the one of ``key``) if it took effect."""
        if operation == "hold":
            return self.held if self.has("hold") else None
        if operation == "charge":
            return self.charged if self.has("charge") else None
        if operation == "refund":
            refund = self.refund_of(key)
            return None if refund is None else refund.amount
        # the release operation, not the rest of a hold that a charge gives back
        for entry in self.entries:
            if entry.kind == "charge":
                return None
            if entry.kind == "release":
                return entry.amount
        return None


class PaymentConflict(Exception):
    """The request contradicts what this order's ledger already says."""


class OperationInProgress(Exception):
    """Another call with this idempotency key is being worked on; this one did nothing."""


class Ledger:
    def __init__(self) -> None:
        self._accounts: dict[str, OrderAccount] = {}
        self._in_flight: set[tuple[str, Operation, str]] = set()

    def account(self, order_id: str) -> OrderAccount | None:
        return self._accounts.get(order_id)

    @contextlib.contextmanager
    def calling(self, order_id: str, operation: Operation, key: str = "") -> Iterator[None]:
        """Mark one call with the idempotency key ``(order_id, operation, key)`` (``key``:
        a refund's refund key) as being worked on until the block ends.

        Raises :class:`OperationInProgress` when another call with that key is.
        """
        call = (order_id, operation, key)
        if call in self._in_flight:
            raise OperationInProgress(
                f"a {operation} of order {order_id} is already being worked on; ask again later"
            )
        self._in_flight.add(call)
        try:
            yield
        finally:
            self._in_flight.discard(call)

    def operation(
        self, order_id: str, operation: Operation, key: str = ""
    ) -> tuple[OperationState, int]:
        """What became of the operation with the idempotency key ``(order_id, operation,
        key)``: ``("done", amount)`` when it took effect (held, charged, released or
        refunded ``amount``), ``("in_progress", 0)`` while a call with that key is being
        worked on, else ``("absent", 0)`` (never done: not asked, failed or declined).
        """
        account = self._accounts.get(order_id)
        done = None if account is None else account.done(operation, key)
        if done is not None:
            return "done", done
        if (order_id, operation, key) in self._in_flight:
            return "in_progress", 0
        return "absent", 0

    def hold(self, *, user_id: str, order_id: str, amount: int) -> None:
        """Reserve ``amount`` for the order, once."""
        account = self._open(user_id, order_id)
        if account.has("charge"):
            raise PaymentConflict(f"order {order_id} is already cleared; it cannot be held again")
        if account.has("hold"):
            if account.held != amount:
                raise PaymentConflict(
                    f"order {order_id} already holds {account.held}, not {amount}"
                )
            return
        account.held = amount
        account.record("hold", amount)

    def clear(self, *, user_id: str, order_id: str, amount: int) -> None:
        """Charge ``amount`` (final, may exceed the hold) and release the rest of the hold, once.

        A clear always leaves a ``charge`` entry, even of 0: it marks the order as settled.
        """
        account = self._open(user_id, order_id)
        if account.has("charge"):
            if account.charged != amount:
                raise PaymentConflict(
                    f"order {order_id} was already charged {account.charged}, not {amount}"
                )
            return
        account.charged = amount
        account.record("charge", amount)
        rest = account.held - account.released - amount  # a released hold is gone already
        if rest > 0:
            account.released += rest
            account.record("release", rest)

    def release(self, *, user_id: str, order_id: str, amount: int) -> None:
        """Release the whole hold of an order that was never charged (a ride whose charge
        became debt), once. ``amount`` must be what is held; a later clear still charges.
        """
        account = self._open(user_id, order_id)
        if account.has("charge"):
            raise PaymentConflict(f"order {order_id} is already cleared; its hold is gone")
        if not account.has("hold"):
            raise PaymentConflict(f"order {order_id} holds nothing to release")
        if amount != account.held:
            raise PaymentConflict(f"order {order_id} holds {account.held}, not {amount}")
        if account.has("release"):
            return
        account.released = amount
        account.record("release", amount)

    def refund(self, *, user_id: str, order_id: str, amount: int, refund_key: str) -> None:
        """Give back ``amount`` of the order's charge, once per ``refund_key``.

        Refunds never add up to more than was charged.
        """
        account = self._open(user_id, order_id)
        if (earlier := account.refund_of(refund_key)) is not None:
            if earlier.amount != amount:
                raise PaymentConflict(
                    f"refund {refund_key!r} of order {order_id} was {earlier.amount}, not {amount}"
                )
            return
        if not account.has("charge"):
            raise PaymentConflict(f"order {order_id} was never charged; nothing to refund")
        if account.refunded + amount > account.charged:
            raise PaymentConflict(
                f"order {order_id} was charged {account.charged} and refunded "
                f"{account.refunded}; {amount} more is too much"
            )
        account.refunded += amount
        account.record("refund", amount, refund_key)

    def _open(self, user_id: str, order_id: str) -> OrderAccount:
        account = self._accounts.get(order_id)
        if account is None:
            account = self._accounts[order_id] = OrderAccount(order_id=order_id, user_id=user_id)
        elif account.user_id != user_id:
            raise PaymentConflict(f"order {order_id} belongs to another user")
        return account
