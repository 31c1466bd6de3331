-- Citus readiness (docs/scaling.md, "The write side past one primary"): a distributed
-- table's unique constraints must contain its distribution column, and orders will be
-- distributed by user_id. The key gains user_id as its last column, so lookups by
-- (id, created_at) use it exactly as before. Cheap on today's small partitions; on
-- ~30 hot partitions of tens of millions of rows it would be a long index rebuild.
-- id stays unique in practice: it is a UUIDv7 made by the command side (74 random bits
-- per millisecond), so (id, created_at, user_id) is unique iff (id, created_at) is.
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id, created_at, user_id);
