-- Issue 13: the outbox no longer NOTIFYs; the projector polls (ADR 0027, amending 0004;
-- docs/benchmarks.md "i13bounds", "i13pgconf", "i13notify").
--
-- A transaction that has called pg_notify takes the NOTIFY queue's lock (PostgreSQL ≤ 17,
-- PreCommit_Notify: AccessExclusive on database 0) before writing its commit record and
-- holds it until after its WAL flush, so every notifying commit flushed alone and the
-- group commit of the other sessions stopped at it. Three of a ride flow's ≈ 4.8 commits
-- (start, finish, settle) inserted an outbox row and notified.
--
-- Catalog changes only (no rewrite, no scan). A rolling deploy is safe both ways: a
-- projector of the previous release still LISTENs, hears nothing any more, and finds the
-- new rows by its own poll (1 s then); a command API of either release inserts the same
-- rows. The trigger goes first: it depends on the function.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
