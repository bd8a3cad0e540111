-- An (id, day)'s views are read through the index of an id's views (site, visitor, viewed_at),
-- one (id, day) at a time (tally_visitor_moves, tally_visit_moves), only while the statistics
-- of the day's partition know it holds views with ids. Taken before any came (a partition
-- analyzed while only /api/pageviews had written to it), they say none has one: the planner
-- then costs both partial indexes of views with ids as empty and takes the smaller, on
-- viewed_at alone, reading every view with an id of the day for each (id, day). Autovacuum
-- analyzes a partition again only once a tenth of its rows have changed, so such statistics
-- can last the day. Measured (pip, 1M views rolled up, a day partition of 626,000 views, 12,000
-- of them from tally.js's beacons of the last minute): the tail's 1,492 (id, day)s read by a
-- stats request in 2.9 s, and 22 ms once the partition was analyzed (0.1 s); a minutely rollup
-- 10 s. So the rollup first analyzes each partition of the days it folds whose statistics say
-- none of its views has an id while one has (docs/ARCHITECTURE.md, "Plans and JIT"). ANALYZE
-- reads a sample (30,000 rows), takes no lock that inserts wait on, and its new statistics
-- replace the plans sessions have kept for the functions.
CREATE OR REPLACE FUNCTION tally_analyze_days_with_unseen_ids(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day_ date;
    part regclass;
    analyzed integer := 0;
BEGIN
    FOREACH day_ IN ARRAY days LOOP
        -- Pruned to the day's partition (or the default one), through its index of views with ids.
        SELECT v.tableoid::regclass INTO part FROM page_views v
         WHERE v.viewed_at >= day_::timestamp AT TIME ZONE 'UTC'
           AND v.viewed_at < (day_ + 1)::timestamp AT TIME ZONE 'UTC'
           AND v.visitor IS NOT NULL
         LIMIT 1;
        CONTINUE WHEN part IS NULL;
        IF EXISTS (SELECT 1 FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename
                     JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
                    WHERE c.oid = part AND s.attname = 'visitor' AND NOT s.inherited AND s.null_frac = 1) THEN
            EXECUTE format('ANALYZE %s', part);
            analyzed := analyzed + 1;
        END IF;
    END LOOP;
    RETURN analyzed;
END
$$;
