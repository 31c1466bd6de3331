-- Each step of a ride is one transaction; these functions make each one round trip.
-- The decisions (prices, durations, amounts, states) are taken in Python
-- (command_api/rides.py); a function only applies one step atomically and appends its
-- outbox event. Events are built from the rows themselves: OrderSnapshot's fields are
-- exactly the order columns below, UserSummarySnapshot's the summary columns.
-- A refusal raises SQLSTATE 'SC409' with the refusal's code as the message, which
-- rolls the whole step back.

CREATE TYPE order_snapshot AS (
    id uuid, offer_id uuid, user_id text, scooter_id text, zone_id text, status text,
    payment_status text, price_per_minute integer, price_unlock integer, deposit integer,
    free_ride_seconds integer, created_at timestamptz, started_at timestamptz,
    finished_at timestamptz, duration_seconds integer, total_amount integer,
    distance_meters integer, version integer
);

CREATE TYPE summary_snapshot AS (
    user_id text, rides_count integer, total_charged bigint, debt bigint,
    last_payment_status text, version bigint
);

CREATE FUNCTION order_snapshot_of(o orders) RETURNS order_snapshot
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(o.id, o.offer_id, o.user_id, o.scooter_id, o.zone_id, o.status,
               o.payment_status, o.price_per_minute, o.price_unlock, o.deposit,
               o.free_ride_seconds, o.created_at, o.started_at, o.finished_at,
               o.duration_seconds, o.total_amount, o.distance_meters, o.version)::order_snapshot
$$;

CREATE FUNCTION append_order_event(p_type text, p_order order_snapshot,
                                   p_summary summary_snapshot)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
    VALUES (p_type, p_order.id, p_order.user_id, p_order.version,
            jsonb_build_object('type', p_type, 'order', to_jsonb(p_order),
                               'summary', to_jsonb(p_summary)))
$$;

-- Claim the offer, the scooter and a ride slot; write the order 'starting' and the
-- hold we owe (due after p_hold_due_seconds, when the worker undoes a start that
-- never confirmed its hold).
CREATE FUNCTION start_ride(
    p_order_id uuid, p_created_at timestamptz, p_offer_id uuid, p_offer_expires_at timestamptz,
    p_user_id text, p_scooter_id text, p_zone_id text, p_price_per_minute integer,
    p_price_unlock integer, p_deposit integer, p_free_ride_seconds integer, p_pricing jsonb,
    p_max_rides integer, p_hold_due_seconds double precision
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offer_redemptions (offer_id, order_id, expires_at)
    VALUES (p_offer_id, p_order_id, p_offer_expires_at) ON CONFLICT (offer_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'offer_already_used' USING ERRCODE = 'SC409';
    END IF;
    INSERT INTO active_rides (scooter_id, order_id, order_created_at, user_id, started_at)
    VALUES (p_scooter_id, p_order_id, p_created_at, p_user_id, p_created_at)
    ON CONFLICT (scooter_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'scooter_busy' USING ERRCODE = 'SC409';
    END IF;
    INSERT INTO user_summary AS s (user_id, active_rides) VALUES (p_user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET active_rides = s.active_rides + 1, updated_at = now()
        WHERE s.active_rides < p_max_rides AND s.debt = 0;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM user_summary WHERE user_id = p_user_id AND debt > 0) THEN
            RAISE EXCEPTION 'user_has_debt' USING ERRCODE = 'SC409';
        END IF;
        RAISE EXCEPTION 'too_many_active_rides' USING ERRCODE = 'SC409';
    END IF;
    INSERT INTO orders (id, created_at, offer_id, user_id, scooter_id, zone_id,
                        price_per_minute, price_unlock, deposit, free_ride_seconds, status,
                        payment_status, started_at, pricing)
    VALUES (p_order_id, p_created_at, p_offer_id, p_user_id, p_scooter_id, p_zone_id,
            p_price_per_minute, p_price_unlock, p_deposit, p_free_ride_seconds, 'starting',
            'holding', p_created_at, p_pricing);
    INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount,
                                    next_attempt_at)
    VALUES (p_order_id, 'hold', p_created_at, p_user_id, p_deposit,
            now() + make_interval(secs => p_hold_due_seconds));
END $$;

-- The hold succeeded: 'starting' → 'active'. NULL when the start was undone meanwhile.
CREATE FUNCTION activate_ride(p_order_id uuid, p_created_at timestamptz,
                              p_started_at timestamptz)
RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    o orders;
BEGIN
    UPDATE orders SET status = 'active', payment_status = 'held', started_at = p_started_at,
                      version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND status = 'starting'
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE payment_operations SET state = 'done', updated_at = now()
     WHERE order_id = p_order_id AND kind = 'hold' AND state = 'pending';
    PERFORM append_order_event('order_started', order_snapshot_of(o), NULL);
    RETURN order_snapshot_of(o);
END $$;

-- The hold failed (or never confirmed): reject the start and free the scooter, the
-- slot and the offer; owe a release when the hold may exist. False if not 'starting'.
CREATE FUNCTION reject_start(p_order_id uuid, p_created_at timestamptz, p_release boolean)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    o orders;
BEGIN
    UPDATE payment_operations SET state = 'gave_up', updated_at = now()
     WHERE order_id = p_order_id AND kind = 'hold' AND state = 'pending';
    UPDATE orders SET status = 'rejected', payment_status = 'failed',
                      version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND status = 'starting'
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

-- End an active ride with what Python computed; owe its charge (due after
-- p_charge_due_seconds, so the worker does not race the request's own try).
-- NULL when the ride is no longer active (another finish won).
CREATE FUNCTION finish_ride(
    p_order_id uuid, p_created_at timestamptz, p_status text, p_finished_at timestamptz,
    p_duration_seconds integer, p_total_amount integer, p_distance_meters integer,
    p_track jsonb, p_charge_due_seconds double precision
) RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    s summary_snapshot;
BEGIN
    UPDATE orders SET status = p_status, payment_status = 'pending',
                      finished_at = p_finished_at, duration_seconds = p_duration_seconds,
                      total_amount = p_total_amount, distance_meters = p_distance_meters,
                      track = p_track, version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND status = 'active'
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM active_rides WHERE order_id = p_order_id;
    UPDATE user_summary
       SET active_rides = greatest(active_rides - 1, 0),
           rides_count = rides_count + (p_status = 'finished')::integer,
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

-- Record the outcome of the owed charge: p_status is 'charged', 'released' (a zero
-- amount) or 'debt' (the retries gave up: the amount becomes the user's debt).
-- NULL when it was settled already.
CREATE FUNCTION settle_charge(p_order_id uuid, p_created_at timestamptz, p_status text)
RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    o orders;
    s summary_snapshot;
BEGIN
    UPDATE payment_operations
       SET state = CASE WHEN p_status = 'debt' THEN 'gave_up' ELSE 'done' END,
           updated_at = now()
     WHERE order_id = p_order_id AND kind = 'charge' AND state = 'pending';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE orders SET payment_status = p_status, version = version + 1, updated_at = now()
     WHERE id = p_order_id AND created_at = p_created_at AND payment_status = 'pending'
    RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE user_summary
       SET total_charged = total_charged
                           + CASE WHEN p_status = 'debt' THEN 0 ELSE o.total_amount END,
           debt = debt + CASE WHEN p_status = 'debt' THEN o.total_amount ELSE 0 END,
           last_payment_status = p_status, version = version + 1, updated_at = now()
     WHERE user_id = o.user_id
    RETURNING user_id, rides_count, total_charged, debt, last_payment_status, version
         INTO s;
    PERFORM append_order_event('payment_settled', order_snapshot_of(o), s);
    RETURN order_snapshot_of(o);
END $$;
