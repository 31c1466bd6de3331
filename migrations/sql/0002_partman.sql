-- Daily partitions of orders through pg_partman; works with 4.7 (Debian) and 5.x (PGDG).
-- Maintenance runs from our own worker (no shared_preload_libraries / background worker).
CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;
CREATE SCHEMA IF NOT EXISTS archive;

DO $$
DECLARE
    major integer;
BEGIN
    SELECT split_part(extversion, '.', 1)::integer INTO major
      FROM pg_extension WHERE extname = 'pg_partman';
    IF NOT EXISTS (SELECT 1 FROM partman.part_config WHERE parent_table = 'public.orders') THEN
        IF major >= 5 THEN
            PERFORM partman.create_parent(
                p_parent_table := 'public.orders', p_control := 'created_at',
                p_interval := '1 day', p_type := 'range', p_premake := 7);
        ELSE
            PERFORM partman.create_parent(
                p_parent_table := 'public.orders', p_control := 'created_at',
                p_type := 'native', p_interval := 'daily', p_premake := 7);
        END IF;
    END IF;
END $$;
