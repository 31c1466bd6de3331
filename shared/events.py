"""Outbox events: the contract between the command side and the projector.

Every event carries the full snapshot of the order (without the raw track) at
``order.version`` and, when it changed, the user's summary at its version. A
projection therefore needs no history: the newest version wins, so replays,
duplicates and reordering are harmless. Stored payloads follow msgspec's
schema-evolution rules: new fields get defaults, types never change.
"""

from __future__ import annotations

import msgspec

from shared.domain import Order

OrderSnapshot = Order
"""An order's snapshot: the stored order at one version (``shared.domain.Order``, SQL
type ``order_snapshot``); the name says it is a copy taken when the event was written."""


class UserSummarySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A rider's totals at ``version`` (SQL type ``summary_snapshot``; money in currency units)."""

    user_id: str
    rides_count: int
    total_charged: int
    debt: int
    last_payment_status: str | None
    version: int


class OrderEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    order: OrderSnapshot
    summary: UserSummarySnapshot | None = None


class OrderStarted(OrderEvent, frozen=True, kw_only=True, tag="order_started"):
    """A ride began: the hold was confirmed."""


class OrderFinished(OrderEvent, frozen=True, kw_only=True, tag="order_finished"):
    """A ride ended (finished or cancelled); its charge may still be pending."""


class PaymentSettled(OrderEvent, frozen=True, kw_only=True, tag="payment_settled"):
    """A pending charge succeeded or became the user's debt."""


# the operator commands' event types, as the command side appends them (command_api/operator.py)
ORDER_REFUNDED = "order_refunded"
DEBT_SETTLED = "debt_settled"
HOLD_RELEASED = "hold_released"


class OrderRefunded(OrderEvent, frozen=True, kw_only=True, tag=ORDER_REFUNDED):
    """Support refunded part or all of the order's charge (docs/operator-api.md); the
    rider's ``total_charged`` dropped by it."""


class DebtSettled(OrderEvent, frozen=True, kw_only=True, tag=DEBT_SETTLED):
    """Support settled the order's debt: charged through payments at last."""


class HoldReleased(OrderEvent, frozen=True, kw_only=True, tag=HOLD_RELEASED):
    """The hold left behind by the order's debt was released at payments."""


Event = OrderStarted | OrderFinished | PaymentSettled | OrderRefunded | DebtSettled | HoldReleased

event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
