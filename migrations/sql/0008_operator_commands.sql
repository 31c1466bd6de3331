-- Operator commands (issue 12, docs/operator-api.md): every act of support is recorded
-- with its actor, time and reason; refunds have their own rows (their money state);
-- the hold left behind by a ride whose charge became debt is released by the worker.

-- What an operator did: 'force_end' (a ride ended on the rider's behalf), 'refund',
-- 'settle_debt'. reason is NULL only for a force-end through /finish (no body field).
ALTER TABLE order_actions DROP CONSTRAINT order_actions_action_check;
ALTER TABLE order_actions
    ADD CONSTRAINT order_actions_action_check
        CHECK (action IN ('force_end', 'refund', 'settle_debt')),
    ADD COLUMN reason text CHECK (length(reason) BETWEEN 1 AND 500),
    ADD COLUMN amount bigint CHECK (amount >= 0);

-- A refund of an order, one per refund key (the request's Idempotency-Key, which is
-- also the payments refund key). 'pending' from before the payments call until it is
-- confirmed: a pending refund counts against the charge, so concurrent refunds (each
-- reserved under the order's row lock) never add up to more than it.
CREATE TABLE order_refunds (
    order_id         uuid        NOT NULL,
    refund_key       text        NOT NULL,
    order_created_at timestamptz NOT NULL,
    user_id          text        NOT NULL,
    amount           bigint      NOT NULL CHECK (amount > 0),
    state            text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    reason           text        NOT NULL,
    actor            text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    PRIMARY KEY (order_id, refund_key)
);

-- The owed release of the hold left behind by a ride whose charge became debt.
ALTER TABLE payment_operations DROP CONSTRAINT payment_operations_kind_check;
ALTER TABLE payment_operations
    ADD CONSTRAINT payment_operations_kind_check
        CHECK (kind IN ('hold', 'charge', 'release', 'release_debt_hold'));

-- A rider's charges that became debt, for settling them (few rows: only gave-up charges).
CREATE INDEX payment_operations_debts ON payment_operations (user_id)
    WHERE kind = 'charge' AND state = 'gave_up';

-- What a receipt needs besides the order's row (shared/receipt.py, ReceiptInputs), for
-- both sides: the confirmed refunds as a JSON array of {amount, reason} in the order
-- they were given, and whether the hold left behind by a debt was released.
CREATE FUNCTION order_refunds_json(p_order_id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('amount', amount, 'reason', reason)
                              ORDER BY done_at, refund_key), '[]'::jsonb)::text
      FROM order_refunds WHERE order_id = p_order_id AND state = 'done'
$$;

CREATE FUNCTION debt_hold_released(p_order_id uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM payment_operations
                    WHERE order_id = p_order_id AND kind = 'release_debt_hold'
                      AND state = 'done')
$$;

-- Refunds left pending (an ambiguous payments failure), for the worker to ask again.
CREATE INDEX order_refunds_pending ON order_refunds (created_at) WHERE state = 'pending';
