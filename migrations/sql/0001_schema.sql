-- Write-side schema. Orders are partitioned by day on created_at (pg_partman);
-- global uniqueness that a partitioned table cannot enforce lives in small tables.

CREATE TABLE orders (
    id                uuid        NOT NULL,  -- UUIDv7: embeds created_at
    created_at        timestamptz NOT NULL,  -- partition key, equals the id's timestamp
    offer_id          uuid        NOT NULL,
    user_id           text        NOT NULL,
    scooter_id        text        NOT NULL,
    zone_id           text        NOT NULL,
    price_per_minute  integer     NOT NULL CHECK (price_per_minute >= 0),
    price_unlock      integer     NOT NULL CHECK (price_unlock >= 0),
    deposit           integer     NOT NULL CHECK (deposit >= 0),
    free_ride_seconds integer     NOT NULL,
    status            text        NOT NULL
        CHECK (status IN ('starting', 'active', 'finished', 'cancelled', 'rejected')),
    payment_status    text        NOT NULL
        CHECK (payment_status IN ('holding', 'held', 'pending', 'charged', 'released', 'debt', 'failed')),
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    duration_seconds  integer,
    total_amount      integer     CHECK (total_amount >= 0),
    distance_meters   integer,
    track             jsonb,                 -- the ride's GPS points; what makes an order big
    pricing           jsonb       NOT NULL,  -- the offer's inputs, for audit
    version           integer     NOT NULL DEFAULT 1,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX orders_user_created ON orders (user_id, created_at DESC, id DESC);

-- An offer starts at most one order. Rows are pruned once the offer has expired.
CREATE TABLE offer_redemptions (
    offer_id   uuid        PRIMARY KEY,
    order_id   uuid        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX offer_redemptions_expires ON offer_redemptions (expires_at);

-- A scooter has at most one active ride; the per-user limit is counted in user_summary.
CREATE TABLE active_rides (
    scooter_id       text        PRIMARY KEY,
    order_id         uuid        NOT NULL UNIQUE,
    order_created_at timestamptz NOT NULL,
    user_id          text        NOT NULL,
    started_at       timestamptz NOT NULL
);
CREATE INDEX active_rides_user ON active_rides (user_id);

-- Idempotency-Key (IETF draft): first result replayed; a different body is refused.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,  -- endpoint and acting user
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status_code  integer,               -- NULL while in flight
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Money movements we owe the payments service, retried by the worker until done.
CREATE TABLE payment_operations (
    order_id         uuid        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('hold', 'charge', 'release')),
    order_created_at timestamptz NOT NULL,
    user_id          text        NOT NULL,
    amount           integer     NOT NULL CHECK (amount >= 0),
    state            text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'done', 'gave_up')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);
CREATE INDEX payment_operations_due ON payment_operations (next_attempt_at)
    WHERE state = 'pending';

CREATE TABLE user_summary (
    user_id             text        PRIMARY KEY,
    rides_count         integer     NOT NULL DEFAULT 0,
    active_rides        integer     NOT NULL DEFAULT 0 CHECK (active_rides >= 0),
    total_charged       bigint      NOT NULL DEFAULT 0,
    debt                bigint      NOT NULL DEFAULT 0,
    last_payment_status text,
    version             bigint      NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Events appended in the same transaction as the change; the projector reads them.
CREATE TABLE outbox (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type       text        NOT NULL,
    order_id         uuid        NOT NULL,
    user_id          text        NOT NULL,
    order_version    integer     NOT NULL,
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
