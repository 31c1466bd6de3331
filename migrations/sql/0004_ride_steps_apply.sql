-- The ride steps again, one round trip each (ADR 0005), but now they only APPLY what
-- Python decided (shared/lifecycle.py): target statuses, the status a step requires
-- ("only if still <status>"), and the deltas of rides_count, total_charged and debt come
-- in as parameters. SQL keeps the guards that need the rows: an offer starts one order,
-- a scooter has one active ride, a rider's ride slots and debt at start.
-- A refusal raises SQLSTATE 'SC409' with a shared.lifecycle.Refusal code as the message,
-- which rolls the whole step back.
--
-- Money, durations and distances become 64-bit end to end (a long ride's distance
-- overflowed int4 and could never be finished). Replaces the functions of 0003.

DROP FUNCTION start_ride(uuid, timestamptz, uuid, timestamptz, text, text, text, integer,
                         integer, integer, integer, jsonb, integer, double precision);
DROP FUNCTION activate_ride(uuid, timestamptz, timestamptz);
DROP FUNCTION reject_start(uuid, timestamptz, boolean);
DROP FUNCTION finish_ride(uuid, timestamptz, text, timestamptz, integer, integer, integer,
                          jsonb, double precision);
DROP FUNCTION settle_charge(uuid, timestamptz, text);
DROP FUNCTION append_order_event(text, order_snapshot, summary_snapshot);
DROP FUNCTION order_snapshot_of(orders);
DROP TYPE order_snapshot;

-- Every int of shared.domain.Order is bigint (tests/integration/test_order_shape.py).
ALTER TABLE orders
    ALTER COLUMN price_per_minute TYPE bigint,
    ALTER COLUMN price_unlock TYPE bigint,
    ALTER COLUMN deposit TYPE bigint,
    ALTER COLUMN free_ride_seconds TYPE bigint,
    ALTER COLUMN duration_seconds TYPE bigint,
    ALTER COLUMN total_amount TYPE bigint,
    ALTER COLUMN distance_meters TYPE bigint,
    ALTER COLUMN version TYPE bigint;
ALTER TABLE payment_operations ALTER COLUMN amount TYPE bigint;
ALTER TABLE outbox ALTER COLUMN order_version TYPE bigint;

-- pg_partman 4.x keeps a template table for the partitions' non-inherited properties;
-- keep its columns like the parent's.
DO $$
BEGIN
    IF to_regclass('partman.template_public_orders') IS NOT NULL THEN
        ALTER TABLE partman.template_public_orders
            ALTER COLUMN price_per_minute TYPE bigint,
            ALTER COLUMN price_unlock TYPE bigint,
            ALTER COLUMN deposit TYPE bigint,
            ALTER COLUMN free_ride_seconds TYPE bigint,
            ALTER COLUMN duration_seconds TYPE bigint,
            ALTER COLUMN total_amount TYPE bigint,
            ALTER COLUMN distance_meters TYPE bigint,
            ALTER COLUMN version TYPE bigint;
    END IF;
END $$;

-- shared.domain.Order, field by field and in its order.
CREATE TYPE order_snapshot AS (
    id uuid, user_id text, scooter_id text, zone_id text, status text, payment_status text,
    price_per_minute bigint, price_unlock bigint, deposit bigint, created_at timestamptz,
    started_at timestamptz, finished_at timestamptz, duration_seconds bigint,
    total_amount bigint, distance_meters bigint, version bigint, offer_id uuid,
    free_ride_seconds bigint
);

CREATE FUNCTION order_snapshot_of(o orders) RETURNS order_snapshot
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(o.id, o.user_id, o.scooter_id, o.zone_id, o.status, o.payment_status,
               o.price_per_minute, o.price_unlock, o.deposit, o.created_at, o.started_at,
               o.finished_at, o.duration_seconds, o.total_amount, o.distance_meters,
               o.version, o.offer_id, o.free_ride_seconds)::order_snapshot
$$;

CREATE FUNCTION append_order_event(p_type text, p_order order_snapshot,
                                   p_summary summary_snapshot)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
    VALUES (p_type, p_order.id, p_order.user_id, p_order.version,
            jsonb_build_object('type', p_type, 'order', to_jsonb(p_order),
                               'summary', to_jsonb(p_summary)))
$$;

-- Start: claim the offer, the scooter and a ride slot (refused when the rider already
-- has p_max_rides or owes more than p_debt_allowed); write p_order (a
-- shared.domain.NewOrder as jsonb, statuses as Python set them) and the hold we owe,
-- due after p_hold_due_seconds (when the worker undoes a start that never confirmed it).
CREATE FUNCTION start_ride(
    p_order jsonb, p_offer_expires_at timestamptz, p_max_rides integer,
    p_debt_allowed bigint, p_hold_due_seconds double precision
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    o orders := jsonb_populate_record(NULL::orders, p_order);
BEGIN
    INSERT INTO offer_redemptions (offer_id, order_id, expires_at)
    VALUES (o.offer_id, o.id, p_offer_expires_at) ON CONFLICT (offer_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'offer_already_used' USING ERRCODE = 'SC409';
    END IF;
    INSERT INTO active_rides (scooter_id, order_id, order_created_at, user_id, started_at)
    VALUES (o.scooter_id, o.id, o.created_at, o.user_id, o.started_at)
    ON CONFLICT (scooter_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'scooter_busy' USING ERRCODE = 'SC409';
    END IF;
    INSERT INTO user_summary AS s (user_id, active_rides) VALUES (o.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET active_rides = s.active_rides + 1, updated_at = now()
        WHERE s.active_rides < p_max_rides AND s.debt <= p_debt_allowed;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM user_summary
                    WHERE user_id = o.user_id AND debt > p_debt_allowed) THEN
            RAISE EXCEPTION 'user_has_debt' USING ERRCODE = 'SC409';
        END IF;
        RAISE EXCEPTION 'too_many_active_rides' USING ERRCODE = 'SC409';
    END IF;
    o.updated_at := now();
    INSERT INTO orders SELECT o.*;
    INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount,
                                    next_attempt_at)
    VALUES (o.id, 'hold', o.created_at, o.user_id, o.deposit,
            now() + make_interval(secs => p_hold_due_seconds));
END $$;

-- Activate: the hold succeeded. Moves the order p_from → p_status / p_payment_status
-- (shared.lifecycle.ACTIVATE) and closes the owed hold. NULL when the order is no
-- longer p_from (the worker undid the start meanwhile).
CREATE FUNCTION activate_ride(
    p_order_id uuid, p_created_at timestamptz, p_started_at timestamptz,
    p_from text, p_status text, p_payment_status text
) RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    o orders;
BEGIN
    UPDATE orders SET status = p_status, payment_status = p_payment_status,
                      started_at = p_started_at, version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND status = p_from
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE payment_operations SET state = 'done', updated_at = now()
     WHERE order_id = p_order_id AND kind = 'hold' AND state = 'pending';
    PERFORM append_order_event('order_started', order_snapshot_of(o), NULL);
    RETURN order_snapshot_of(o);
END $$;

-- Reject: the hold failed (or never confirmed). Moves the order p_from → p_status /
-- p_payment_status (shared.lifecycle.REJECT), frees the scooter, the slot and the
-- offer, and owes a release when the hold may exist. False if the order is not p_from.
CREATE FUNCTION reject_start(
    p_order_id uuid, p_created_at timestamptz, p_from text, p_status text,
    p_payment_status text, p_release boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    o orders;
BEGIN
    UPDATE payment_operations SET state = 'gave_up', updated_at = now()
     WHERE order_id = p_order_id AND kind = 'hold' AND state = 'pending';
    UPDATE orders SET status = p_status, payment_status = p_payment_status,
                      version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND status = p_from
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM active_rides WHERE order_id = p_order_id;
    DELETE FROM offer_redemptions WHERE offer_id = o.offer_id;
    UPDATE user_summary SET active_rides = greatest(active_rides - 1, 0), updated_at = now()
     WHERE user_id = o.user_id;
    IF p_release THEN
        INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount)
        VALUES (p_order_id, 'release', p_created_at, o.user_id, 0)
        ON CONFLICT (order_id, kind) DO NOTHING;
    END IF;
    RETURN true;
END $$;

-- Finish: end a ride as Python decided (shared.lifecycle.decide_finish): p_from →
-- p_status / p_payment_status, the duration, amount and distance, rides_count grown by
-- p_rides_count_delta; owe the charge of p_total_amount, due after p_charge_due_seconds
-- (so the worker does not race the request's own try). NULL when the order is no
-- longer p_from (another finish won).
CREATE FUNCTION finish_ride(
    p_order_id uuid, p_created_at timestamptz, p_from text, p_status text,
    p_payment_status text, p_finished_at timestamptz, p_duration_seconds bigint,
    p_total_amount bigint, p_distance_meters bigint, p_track jsonb,
    p_rides_count_delta integer, p_charge_due_seconds double precision
) RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    s summary_snapshot;
BEGIN
    UPDATE orders SET status = p_status, payment_status = p_payment_status,
                      finished_at = p_finished_at, duration_seconds = p_duration_seconds,
                      total_amount = p_total_amount, distance_meters = p_distance_meters,
                      track = p_track, version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND status = p_from
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM active_rides WHERE order_id = p_order_id;
    UPDATE user_summary
       SET active_rides = greatest(active_rides - 1, 0),
           rides_count = rides_count + p_rides_count_delta,
           version = version + 1, updated_at = now()
     WHERE user_id = o.user_id
    RETURNING user_id, rides_count, total_charged, debt, last_payment_status, version
         INTO s;
    INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount,
                                    next_attempt_at)
    VALUES (p_order_id, 'charge', p_created_at, o.user_id, p_total_amount,
            now() + make_interval(secs => p_charge_due_seconds))
    ON CONFLICT (order_id, kind) DO NOTHING;
    PERFORM append_order_event('order_finished', order_snapshot_of(o), s);
    RETURN order_snapshot_of(o);
END $$;

-- Settle: record the owed charge's outcome as Python decided
-- (shared.lifecycle.decide_settle): close the operation as p_operation_state, move the
-- payment status p_payment_from → p_payment_status, grow total_charged and debt by the
-- deltas. NULL when it was settled already.
CREATE FUNCTION settle_charge(
    p_order_id uuid, p_created_at timestamptz, p_payment_from text, p_payment_status text,
    p_operation_state text, p_total_charged_delta bigint, p_debt_delta bigint
) RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    s summary_snapshot;
BEGIN
    UPDATE payment_operations SET state = p_operation_state, updated_at = now()
     WHERE order_id = p_order_id AND kind = 'charge' AND state = 'pending';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE orders SET payment_status = p_payment_status, version = version + 1,
                      updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND payment_status = p_payment_from
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE user_summary
       SET total_charged = total_charged + p_total_charged_delta,
           debt = debt + p_debt_delta,
           last_payment_status = p_payment_status, version = version + 1, updated_at = now()
     WHERE user_id = o.user_id
    RETURNING user_id, rides_count, total_charged, debt, last_payment_status, version
         INTO s;
    PERFORM append_order_event('payment_settled', order_snapshot_of(o), s);
    RETURN order_snapshot_of(o);
END $$;
