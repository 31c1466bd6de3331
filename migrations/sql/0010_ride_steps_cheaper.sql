-- Issue 13: what a ride step costs Postgres (docs/benchmarks.md, "i13pg").
--
-- append_order_event becomes PL/pgSQL. As a LANGUAGE sql function that is not a single
-- SELECT it could not be inlined, and PERFORM ran it through a fresh executor each time,
-- so its INSERT was parsed, analysed and planned on every call: three times a ride,
-- 12 % of the ride steps' Postgres CPU in a perf profile. PL/pgSQL keeps the prepared
-- INSERT for the session. Same signature, same row.
CREATE OR REPLACE FUNCTION append_order_event(p_type text, p_order order_snapshot,
                                              p_summary summary_snapshot)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (event_type, order_id, user_id, order_version, payload)
    VALUES (p_type, p_order.id, p_order.user_id, p_order.version,
            jsonb_build_object('type', p_type, 'order', to_jsonb(p_order),
                               'summary', to_jsonb(p_summary)));
END $$;
