-- A day's views moved out of the default partition (tally_ensure_day_partition, migrations/0019)
-- were lost to stats when a rollup ran during the move. The rollup's big statement waited on
-- the move's locks, was planned with the partitions it saw before the wait (not the new day's)
-- and read in a snapshot taken after it (the default partition emptied): it folded none of the
-- moved views, and its watermark passed them, so stats never counted them and retention later
-- dropped them as rolled up. It happened when a backfill's views waited in the default
-- partition and maintain_partitions (hourly, at :03) met the minutely rollup. A move now holds
-- the rollup state's row first (the rollup's first act is to lock it FOR UPDATE): a rollup
-- under way makes the move wait (100 ms, then the job tries again), and a rollup that starts
-- during the move waits for it and then plans and reads with the new day in place.
CREATE OR REPLACE FUNCTION tally_ensure_day_partition(day date) RETURNS text LANGUAGE plpgsql
SET lock_timeout = '100ms'
AS $$
DECLARE
    name text := 'page_views_p' || to_char(day, 'YYYYMMDD');
    day_starts timestamptz := day::timestamp AT TIME ZONE 'UTC';
    day_ends timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    IF EXISTS (SELECT FROM tally_page_view_partitions p WHERE p.starts < day_ends AND p.ends > day_starts) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT FROM page_views_default WHERE viewed_at >= day_starts AND viewed_at < day_ends) THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF page_views FOR VALUES FROM (%L) TO (%L)', name, day_starts, day_ends);
        RETURN name;
    END IF;
    PERFORM FROM page_view_rollup_state FOR SHARE;  -- no rollup during the move (see above)
    EXECUTE format('CREATE TABLE %I (LIKE page_views INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('WITH moved AS (DELETE FROM page_views_default WHERE viewed_at >= $1 AND viewed_at < $2'
                   ' RETURNING *) INSERT INTO %I SELECT * FROM moved', name) USING day_starts, day_ends;
    EXECUTE format('ALTER TABLE page_views ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, day_starts, day_ends);
    RETURN name;
END
$$;
