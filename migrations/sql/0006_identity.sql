-- Identity (ADR 0006): development offer keys and who force-ended a ride.

-- Offer keys of a development stack, created once by the first process that needs one
-- (shared/infra/offer_keys.py), so no key lives in code or configuration. A production stack
-- takes its keys from SCOOTERS_OFFER_KEYS and leaves this table empty.
CREATE TABLE offer_keys (
    kid text PRIMARY KEY,
    secret bytea NOT NULL CHECK (length(secret) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- What an operator did to a rider's order, with who did it: written in the same
-- transaction as the step itself (command_api/rides.py). A ride its own rider finished
-- has no row here: its actor is its rider.
CREATE TABLE order_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id uuid NOT NULL,
    order_created_at timestamptz NOT NULL,
    action text NOT NULL CHECK (action IN ('force_end')),
    actor text NOT NULL,
    actor_roles text[] NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_actions_order ON order_actions (order_id);
