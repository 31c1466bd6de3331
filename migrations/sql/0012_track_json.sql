-- Issue 13: what a finish and a receipt cost Postgres (ADR 0021, docs/benchmarks.md
-- "i13pg2").
--
-- 1. orders.track becomes json. Nothing in Postgres ever looks inside a track: the finish
--    writes it (as the JSON text the command API encoded), the track endpoint reads it
--    back as text. As jsonb, every finish parsed the ≈10 KB track into a tree and
--    serialised it again (7–9 % of the ride steps' backend CPU, `jsonb_recv`); json only
--    checks the text's syntax and stores it as sent, and that text compresses better
--    (the load test's 10 KB track: 2,240 B stored instead of 2,690 B).
--    Changing the column's type would rewrite every partition under an ACCESS EXCLUSIVE
--    lock on `orders`; instead the jsonb column is renamed `track_jsonb` and keeps the
--    tracks of the rides finished before this migration, and a new json column `track`
--    takes the new ones. Both are catalog changes only (no rewrite, no scan). Readers
--    take `coalesce(track::text, track_jsonb::text)`; `track_jsonb` is dropped by a
--    later migration once the last partition written before this one is archived
--    (also a catalog change). The 0004/0009 functions (processes of the previous
--    release during a rolling deploy) name `track`, so they write the json column too
--    (jsonb to json is an assignment cast).
ALTER TABLE orders RENAME COLUMN track TO track_jsonb;
ALTER TABLE orders ADD COLUMN track json;  -- the ride's GPS points, as the finish sent them

-- pg_partman 4.x keeps a template table for the partitions' non-inherited properties;
-- keep its columns like the parent's (as 0004 does).
DO $$
BEGIN
    IF to_regclass('partman.template_public_orders') IS NOT NULL THEN
        ALTER TABLE partman.template_public_orders RENAME COLUMN track TO track_jsonb;
        ALTER TABLE partman.template_public_orders ADD COLUMN track json;
    END IF;
END $$;

-- 2. The receipt's inputs (0008) in PL/pgSQL. As LANGUAGE sql functions that cannot be
--    inlined (an aggregate, a sub-SELECT), each statement calling them parsed, analysed
--    and planned their bodies again (the projector's receipt query once per batch of
--    ended rides: 2–3 % of the run's Postgres CPU in the load test). PL/pgSQL keeps the
--    prepared query for the session. Same signatures, same results, still STABLE.
CREATE OR REPLACE FUNCTION order_refunds_json(p_order_id uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object('amount', amount, 'reason', reason)
                                      ORDER BY done_at, refund_key), '[]'::jsonb)::text
              FROM order_refunds WHERE order_id = p_order_id AND state = 'done');
END $$;

CREATE OR REPLACE FUNCTION debt_hold_released(p_order_id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM payment_operations
                    WHERE order_id = p_order_id AND kind = 'release_debt_hold'
                      AND state = 'done');
END $$;
