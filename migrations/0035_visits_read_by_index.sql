-- An (id, UTC day)'s views read through the index of an id's views, one (id, day) at a time,
-- whatever the plan: as migrations/0025 wrote it but for that. Its join of the (id, day)s given
-- to page_views let the planner choose, and PostgreSQL 18 plans a SQL function's statements for
-- the values of each call (15 plans them once, for any): with the array of a minutely rollup it
-- chose to hash every view of every day, since it costs a probe as one of each day partition's
-- index, not of the one day's it reads. A minutely rollup of 1,000 views after 1M rolled up took
-- 1.0 s on 18 against 0.25 s on 15, growing with the table; this function alone 430 ms, and
-- 25 ms as below (docs/BENCHMARKS.md, "Rollups smaller than what they roll up"). The subquery
-- below, with its OFFSET 0, is not flattened into a join, so the planner has no other way than
-- the index. tally_visitor_moves (migrations/dimension_functions.sql) reads the same way.

CREATE OR REPLACE FUNCTION tally_visit_moves(days tally_visitor_of_day[], snapshot pg_snapshot)
RETURNS TABLE (site text, visitor bigint, day date, visit tally_visit, delta integer)
LANGUAGE sql STABLE AS $$
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
      FROM tally_visits_of(ARRAY(SELECT seen.seen FROM seen WHERE folded_unheld)) folded
$$;
