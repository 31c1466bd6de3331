-- Issue 13: fewer commits per ride. A process that activated a ride keeps the snapshot
-- the activation returned and finishes from it without reading the order back
-- (command_api/rides.py, ActivatedRides). This finish_ride applies the decision only if
-- the order is still p_from AND still has the terms the decision was computed from
-- (start time, prices, free seconds): a snapshot that no longer matches the row makes it
-- return NULL like a lost race, and the caller reads the row and decides again.
-- The 12-argument finish_ride of 0004 stays, for processes of the previous release
-- during a rolling deploy and for callers that did read the row.
CREATE FUNCTION finish_ride(
    p_order_id uuid, p_created_at timestamptz, p_from text, p_status text,
    p_payment_status text, p_finished_at timestamptz, p_duration_seconds bigint,
    p_total_amount bigint, p_distance_meters bigint, p_track jsonb,
    p_rides_count_delta integer, p_charge_due_seconds double precision,
    p_started_at timestamptz, p_price_per_minute bigint, p_price_unlock bigint,
    p_free_ride_seconds bigint
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
       AND started_at = p_started_at AND price_per_minute = p_price_per_minute
       AND price_unlock = p_price_unlock AND free_ride_seconds = p_free_ride_seconds
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
