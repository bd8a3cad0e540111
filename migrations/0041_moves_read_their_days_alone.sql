-- The moves of a few (id, day)s read only the day partitions of those days, in a plan made once
-- a session, on PostgreSQL 15 as on 18. tally_visit_moves (here) and tally_visitor_moves
-- (migrations/dimension_functions.sql) read an (id, UTC day)'s views a probe at a time
-- (migrations/0035); the day of each probe is known only as the probe runs, so a plan starts
-- the scan of every day partition, and a year's retention keeps 375 of them. Measured on 375
-- partitions, three (id, day)s of today, a call of each (median of three, after the first):
-- PostgreSQL 18 (pip) 3.6-5 ms, its plan made once a session but every partition's scan
-- started at each call; Debian's 15, 35-48 ms, as 15 plans a SQL function's statements at
-- every call (migrations/0037's setting changes nothing there). A stats request with ids in its
-- tail calls them four times: 160-250 ms on 15 with a year of days, 30 ms on 18.
--
-- Now PL/pgSQL, whose plans a session keeps on every version, and the probes are bounded also by
-- the first and last day given, as variables: values known when the plan starts, so only those
-- days' partitions are started. (`#variable_conflict use_column`: a name that is a column and a
-- parameter means the column, as in a SQL function.) The same plan and rows as before
-- otherwise: the tests of the rollup and of the stats' tail hold what they count. Measured as
-- above: 0.4-0.7 ms a call on both builds, its plan made once a session (50-90 ms with 375
-- partitions); a stats request with ids arriving 10-30 ms on 15 with a year of days.

CREATE OR REPLACE FUNCTION tally_visit_moves(days tally_visitor_of_day[], snapshot pg_snapshot)
RETURNS TABLE (site text, visitor bigint, day date, visit tally_visit, delta integer)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    reads_from timestamptz := (SELECT min(d.day) FROM unnest(days) d)::timestamp AT TIME ZONE 'UTC';
    reads_until timestamptz := (SELECT max(d.day) + 1 FROM unnest(days) d)::timestamp AT TIME ZONE 'UTC';
BEGIN
    RETURN QUERY
    WITH wanted AS (
        SELECT w.site, w.visitor, w.day, k.visits AS held
          FROM (SELECT DISTINCT * FROM unnest(days)) w
          LEFT JOIN page_view_visit_days k ON k.site = w.site AND k.visitor = w.visitor AND k.day = w.day
    ), seen AS MATERIALIZED (
        SELECT ROW(v.site, v.visitor, v.viewed_at, v.id, v.path, false)::tally_visit_view AS seen,
               w.held IS NULL AND v.recorded_xid < state.watermark AND v.recorded_xid <> ALL (state.in_progress)
                   AS folded_unheld
          FROM wanted w
         CROSS JOIN LATERAL (
               -- Through the index of an id's views, an (id, day) at a time, whatever the plan.
               SELECT * FROM page_views v
                WHERE v.site = w.site AND v.visitor = w.visitor
                  AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'
                  AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
                  AND v.viewed_at >= reads_from AND v.viewed_at < reads_until
                  AND v.visitor IS NOT NULL
               OFFSET 0) v,
               page_view_rollup_state state
         WHERE snapshot IS NULL OR pg_visible_in_snapshot(v.recorded_xid, snapshot)
        UNION ALL
        SELECT ROW(e.site, e.visitor, e.occurred_at, e.id, e.path, true)::tally_visit_view,
               w.held IS NULL AND e.recorded_xid < state.watermark AND e.recorded_xid <> ALL (state.in_progress)
          FROM wanted w
          JOIN events e
            ON e.site = w.site AND e.visitor = w.visitor
           AND e.occurred_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND e.occurred_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC',
               page_view_rollup_state state
         WHERE e.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, snapshot))
    )
    SELECT formed.site, formed.visitor, formed.day, formed.visit, 1
      FROM tally_visits_of(ARRAY(SELECT seen.seen FROM seen)) formed
    UNION ALL
    SELECT w.site, w.visitor, w.day, ROW(held.*)::tally_visit, -1
      FROM wanted w CROSS JOIN LATERAL unnest(w.held) AS held
    UNION ALL
    SELECT folded.site, folded.visitor, folded.day, folded.visit, -1
      FROM tally_visits_of(ARRAY(SELECT seen.seen FROM seen WHERE folded_unheld)) folded;
END
$$;
