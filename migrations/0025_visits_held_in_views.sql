-- The visits the rollups hold for an (id, UTC day) come from `page_view_visit_days`, which keeps
-- them 3 days after a rollup last changed them (ids from /api/collect bring no view after their
-- salt's day). A view of that id and day that came later (an import run again, a backfill with
-- `visitor` set) found no row: its day's visits were formed again from all its views and
-- added, and the ones counted before were never taken back (a visit counted twice, 12 visits
-- where there were 11, bounce rate and entry pages with it). Without a row, the visits the
-- rollups hold are now formed from the views they folded (the state's watermark and
-- in-progress list, read in the caller's snapshot: the rollup holds the state's row, a stats
-- request reads it in the same snapshot), as the visitor days are (migrations/0020): the raw
-- views are the state while retention keeps them.
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
          JOIN page_views v
            ON v.site = w.site AND v.visitor = w.visitor
           AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC',
               page_view_rollup_state state
         WHERE v.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(v.recorded_xid, snapshot))
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
