-- Statistics that know of a few ids send a day's probes through the wrong index as surely as
-- statistics that know of none (migrations/0038). The planner estimates an (id, day)'s read
-- (tally_visit_moves, tally_visitor_moves) at one row through either index of views with ids
-- once the statistics put a partition's views with ids under a few hundred, and the index on
-- viewed_at alone then wins the tie by its smaller tree (8.32 against 8.45), reading every
-- view with an id of the day for each (id, day). Found when CI's rollup of 60,000 views with
-- 20,000 ids ran past two minutes on the default partition's statistics from earlier tests
-- (TRUNCATE keeps them); statistics primed from 5,000 views, 1% of them with ids, or all of one
-- id, reproduce it: about 4 s with statistics that fit the rows, more than 60 s with those. A
-- site whose beacons start to carry ids mid-day, or a backfill into a day
-- analyzed while it was young, meets the same before autovacuum's next ANALYZE (a tenth of
-- the rows changed). So the rollup also analyzes a partition of the days it folds whose index
-- of views with ids has more than doubled (and grown by more than 2 pages, about 800 views)
-- since its statistics were taken: that index's relpages is what ANALYZE (or VACUUM) last saw,
-- its size on disk what the rows are now, read at once, where the cumulative statistics
-- (n_mod_since_analyze) reach the rollup only seconds after the inserts. A partition that
-- stays as its statistics saw it (the default one after its views moved out) is not analyzed
-- again: the index does not grow, and the ANALYZE itself sets relpages to its size.
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
                    WHERE c.oid = part AND s.attname = 'visitor' AND NOT s.inherited
                      AND (s.null_frac = 1 OR EXISTS (
                           SELECT 1 FROM pg_index i
                             JOIN pg_inherits h ON h.inhrelid = i.indexrelid
                              AND h.inhparent = 'page_views_visitor_viewed_at_idx'::regclass
                             JOIN pg_class ic ON ic.oid = i.indexrelid
                            WHERE i.indrelid = part
                              AND pg_relation_size(i.indexrelid) / current_setting('block_size')::bigint
                                  > 2 * greatest(ic.relpages, 1) + 2))) THEN
            EXECUTE format('ANALYZE %s', part);
            analyzed := analyzed + 1;
        END IF;
    END LOOP;
    RETURN analyzed;
END
$$;
