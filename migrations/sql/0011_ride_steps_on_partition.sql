-- Issue 13: the ride steps without planning the partitioned table (ADR 0017).
--
-- activate_ride, finish_ride and settle_charge updated `orders` from PL/pgSQL with
-- parameters: a statement on the partitioned table is custom-planned on every call
-- (a generic plan would lock every partition first), 15 % of the steps' Postgres CPU.
-- The command side now sends each of these steps as one statement that updates the
-- order's own day partition (a plain table: its prepared plan is generic and kept) in a
-- data-modifying WITH, and calls the function below for the rest of the step only when
-- that UPDATE matched a row (command_api/repository.py, _STEPS). The same statement
-- text with `orders` in place of the partition is the way for an order whose day has no
-- partition of its own, or inside a transaction.
--
-- Each function is the part of its 0004/0009 function after `UPDATE orders`, on the
-- snapshot that UPDATE returned, with append_order_event's INSERT written out (same
-- row): same statements, same order, same locks. The 0004/0009 functions stay, for
-- processes of the previous release during a rolling deploy.

-- After activate's UPDATE: close the owed hold, append order_started.
CREATE FUNCTION ride_activated(p_order order_snapshot) RETURNS order_snapshot
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE payment_operations SET state = 'done', updated_at = now()
     WHERE order_id = p_order.id AND kind = 'hold' AND state = 'pending';
    INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
    VALUES ('order_started', p_order.id, p_order.user_id, p_order.version,
            jsonb_build_object('type', 'order_started', 'order', to_jsonb(p_order),
                               'summary', NULL::jsonb));
    RETURN p_order;
END $$;

-- After finish's UPDATE: free the scooter and the ride slot, count the ride, owe the
-- charge of the order's total_amount due after p_charge_due_seconds, append
-- order_finished with the rider's summary.
CREATE FUNCTION ride_finished(p_order order_snapshot, p_rides_count_delta integer,
                              p_charge_due_seconds double precision)
RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    s summary_snapshot;
BEGIN
    DELETE FROM active_rides WHERE order_id = p_order.id;
    UPDATE user_summary
       SET active_rides = greatest(active_rides - 1, 0),
           rides_count = rides_count + p_rides_count_delta,
           version = version + 1, updated_at = now()
     WHERE user_id = p_order.user_id
    RETURNING user_id, rides_count, total_charged, debt, last_payment_status, version
         INTO s;
    INSERT INTO payment_operations (order_id, kind, order_created_at, user_id, amount,
                                    next_attempt_at)
    VALUES (p_order.id, 'charge', p_order.created_at, p_order.user_id, p_order.total_amount,
            now() + make_interval(secs => p_charge_due_seconds))
    ON CONFLICT (order_id, kind) DO NOTHING;
    INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
    VALUES ('order_finished', p_order.id, p_order.user_id, p_order.version,
            jsonb_build_object('type', 'order_finished', 'order', to_jsonb(p_order),
                               'summary', to_jsonb(s)));
    RETURN p_order;
END $$;

-- After settle's two UPDATEs (the owed charge closed, then the order's payment status):
-- grow the rider's total_charged and debt, append payment_settled with the summary.
CREATE FUNCTION charge_settled(p_order order_snapshot, p_total_charged_delta bigint,
                               p_debt_delta bigint)
RETURNS order_snapshot LANGUAGE plpgsql AS $$
DECLARE
    s summary_snapshot;
BEGIN
    UPDATE user_summary
       SET total_charged = total_charged + p_total_charged_delta,
           debt = debt + p_debt_delta,
           last_payment_status = p_order.payment_status, version = version + 1,
           updated_at = now()
     WHERE user_id = p_order.user_id
    RETURNING user_id, rides_count, total_charged, debt, last_payment_status, version
         INTO s;
    INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
    VALUES ('payment_settled', p_order.id, p_order.user_id, p_order.version,
            jsonb_build_object('type', 'payment_settled', 'order', to_jsonb(p_order),
                               'summary', to_jsonb(s)));
    RETURN p_order;
END $$;

-- The partitions of `orders` with a range of their own, as the command side addresses
-- them: qualified name and [lo, hi). A default partition has no range and is not listed.
CREATE FUNCTION orders_partitions(OUT name text, OUT lo timestamptz, OUT hi timestamptz)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), b[1]::timestamptz,
           b[2]::timestamptz
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                     '^FOR VALUES FROM \(''([^'']*)''\) TO \(''([^'']*)''\)$') b
     WHERE i.inhparent = 'orders'::regclass AND b IS NOT NULL
     ORDER BY 2
$$;
