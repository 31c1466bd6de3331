-- The reference's schema, as the seed's migrations/001_init.sql lays it out: orders
-- partitioned by day, one summary row per rider. Offers are signed tokens, not rows.
-- (The seed creates the daily partitions with pg_partman and pg_cron; the driver of
-- tests/load/reference creates the few days a run needs with plain DDL instead.)

CREATE TABLE orders (
    id               uuid        NOT NULL,
    offer_id         uuid        NOT NULL,
    user_id          text        NOT NULL,
    scooter_id       text        NOT NULL,
    zone_id          text        NOT NULL,
    status           text        NOT NULL,           -- active | finished | cancelled
    price_per_minute integer     NOT NULL,
    price_unlock     integer     NOT NULL,
    deposit          integer     NOT NULL,
    free_ride_seconds integer    NOT NULL,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    duration_seconds integer,
    total_amount     bigint,
    distance_meters  bigint,
    track            jsonb,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX orders_offer_id ON orders (offer_id);
CREATE INDEX orders_user_id ON orders (user_id, created_at DESC);

CREATE TABLE user_summary (
    user_id          text PRIMARY KEY,
    active_order_id  uuid,
    orders_count     integer     NOT NULL DEFAULT 0,
    rides_count      integer     NOT NULL DEFAULT 0,
    total_spent      bigint      NOT NULL DEFAULT 0,
    last_order_at    timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
