-- Visits (issue 18, part 1). A visit is one visitor id's views and events on one UTC day (an
-- id's salt's day) with no gap over 30 minutes: it starts at its first view or event, ends at
-- its last, enters at its first view's path and exits at its last view's (an event's page where
-- it has no view; views at one instant in the order they were stored). A bounce is a visit of
-- one view and no event. A day in any zone counts the visits that start on it, so visits per
-- day are exact in every zone, as views are (their 15-minute buckets fit every zone's days).
--
-- Computed by the rollup, not per request: for each (id, UTC day) with fresh views or events,
-- its visits are formed again from all of them (indexes on the views and events with an id make
-- that one range each per id and day), and replace those the rollup had formed before. A stats
-- request does the same over its tail, in its snapshot, without writing. Events also fold
-- into the top-list rollups as the dimension 'event' (their `views` count events), with
-- visitor days (migrations/0015) per event name.

-- An id's views of a UTC day, read in order: one index range.
CREATE INDEX page_views_visitor_idx ON page_views (site, visitor, viewed_at) WHERE visitor IS NOT NULL;

CREATE TYPE tally_visit AS (
    started_at timestamptz,
    ended_at timestamptz,
    entry_path text,
    exit_path text,
    views integer,
    events integer
);

-- One id and UTC day whose visits are to be formed again.
CREATE TYPE tally_visitor_of_day AS (site text, visitor bigint, day date);

-- The visits the rollup formed of each (id, UTC day), while more views of it may come (kept 3
-- days after a rollup last changed them, as page_view_visitor_days): what a later rollup takes
-- back when it forms them again.
CREATE TABLE page_view_visit_days (
    site text NOT NULL,
    visitor bigint NOT NULL,
    day date NOT NULL,  -- UTC
    visits tally_visit[] NOT NULL,
    folded_on date NOT NULL,
    PRIMARY KEY (site, visitor, day)
);
CREATE INDEX page_view_visit_days_folded_on_idx ON page_view_visit_days (folded_on);

-- Visits per site and 15-minute bucket of their start: how many, how many of one view
-- (bounces), their views, and the sum of their durations in microseconds (exact sums).
-- Entry and exit pages are the dimensions 'entry' and 'exit' of page_view_daily_dims and
-- page_view_bucket_dims, whose `views` then count visits: every window edge rule of the
-- top lists holds for them unchanged.
CREATE TABLE page_view_visit_buckets (
    site text NOT NULL,
    bucket timestamptz NOT NULL,
    visits bigint NOT NULL,
    bounces bigint NOT NULL,
    views bigint NOT NULL,
    duration_us bigint NOT NULL,
    PRIMARY KEY (site, bucket)
);
CREATE INDEX page_view_visit_buckets_bucket_idx ON page_view_visit_buckets (bucket);

-- A view as visits see it.
CREATE TYPE tally_visit_view AS (
    site text, visitor bigint, viewed_at timestamptz, id bigint, path text, is_event boolean
);

-- The visits of the given views and events (any order): per site, visitor and UTC day, split
-- where two are over 30 minutes apart. Used by the rollup, the stats tail and filtered reads.
CREATE FUNCTION tally_visits_of(views tally_visit_view[])
RETURNS TABLE (site text, visitor bigint, day date, visit tally_visit)
LANGUAGE sql IMMUTABLE AS $$
    WITH marked AS (
        SELECT v.*, (v.viewed_at AT TIME ZONE 'UTC')::date AS day,
               CASE WHEN v.viewed_at - lag(v.viewed_at) OVER same_day <= interval '30 minutes' THEN 0 ELSE 1 END
                   AS starts
          FROM unnest(views) AS v
        WINDOW same_day AS (PARTITION BY v.site, v.visitor, (v.viewed_at AT TIME ZONE 'UTC')::date
                            ORDER BY v.viewed_at, v.is_event, v.id)
    ), numbered AS (
        SELECT marked.*, sum(starts) OVER (PARTITION BY marked.site, marked.visitor, marked.day
                                           ORDER BY marked.viewed_at, marked.is_event, marked.id) AS number
          FROM marked
    )
    SELECT numbered.site, numbered.visitor, numbered.day,
           ROW(min(viewed_at), max(viewed_at),
               (array_agg(path ORDER BY is_event, viewed_at, id))[1],
               (array_agg(path ORDER BY is_event, viewed_at DESC, id DESC))[1],
               count(*) FILTER (WHERE NOT is_event), count(*) FILTER (WHERE is_event))::tally_visit
      FROM numbered
     GROUP BY numbered.site, numbered.visitor, numbered.day, number
$$;

-- How the visits of the given (id, UTC day)s change: each visit formed now from all of their
-- views that `snapshot` sees (NULL: all the statement sees), +1, and each one the rollups hold,
-- -1. The rollup writes the moves; a stats request counts them over its tail.
CREATE FUNCTION tally_visit_moves(days tally_visitor_of_day[], snapshot pg_snapshot)
RETURNS TABLE (site text, visitor bigint, day date, visit tally_visit, delta integer)
LANGUAGE sql STABLE AS $$
    WITH wanted AS (
        SELECT DISTINCT * FROM unnest(days)
    )
    SELECT formed.site, formed.visitor, formed.day, formed.visit, 1
      FROM tally_visits_of(ARRAY(
               SELECT ROW(v.site, v.visitor, v.viewed_at, v.id, v.path, false)::tally_visit_view
                 FROM wanted w
                 JOIN page_views v
                   ON v.site = w.site AND v.visitor = w.visitor
                  AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'
                  AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
                WHERE v.visitor IS NOT NULL
                  AND (snapshot IS NULL OR pg_visible_in_snapshot(v.recorded_xid, snapshot))
               UNION ALL
               SELECT ROW(e.site, e.visitor, e.occurred_at, e.id, e.path, true)::tally_visit_view
                 FROM wanted w
                 JOIN events e
                   ON e.site = w.site AND e.visitor = w.visitor
                  AND e.occurred_at >= w.day::timestamp AT TIME ZONE 'UTC'
                  AND e.occurred_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
                WHERE e.visitor IS NOT NULL
                  AND (snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, snapshot)))) formed
    UNION ALL
    SELECT k.site, k.visitor, k.day, ROW(held.*)::tally_visit, -1
      FROM wanted w
      JOIN page_view_visit_days k ON k.site = w.site AND k.visitor = w.visitor AND k.day = w.day
     CROSS JOIN LATERAL unnest(k.visits) AS held
$$;

-- The visits of the views stored before this migration, formed once here, a UTC day at a
-- time (each day's views in memory, not the whole table's). Views not rolled up yet are in
-- too: the rollup that folds them forms their days again and takes these back.
DO $$
DECLARE
    utc_day date;
BEGIN
    FOR utc_day IN
        SELECT DISTINCT (viewed_at AT TIME ZONE 'UTC')::date FROM page_views WHERE visitor IS NOT NULL ORDER BY 1
    LOOP
        WITH formed AS MATERIALIZED (
            SELECT f.site, f.visitor, f.day, (f.visit).*,
                   date_bin('15 minutes', (f.visit).started_at, '2000-01-01 00:00+00') AS bucket
              FROM tally_visits_of(ARRAY(
                       SELECT ROW(site, visitor, viewed_at, id, path, false)::tally_visit_view
                         FROM page_views
                        WHERE visitor IS NOT NULL AND viewed_at >= utc_day::timestamp AT TIME ZONE 'UTC'
                          AND viewed_at < (utc_day + 1)::timestamp AT TIME ZONE 'UTC')) f
        ), visit_days AS (
            INSERT INTO page_view_visit_days (site, visitor, day, visits, folded_on)
            SELECT site, visitor, day,
                   array_agg(ROW(started_at, ended_at, entry_path, exit_path, views, events)::tally_visit
                             ORDER BY started_at),
                   (now() AT TIME ZONE 'UTC')::date
              FROM formed GROUP BY 1, 2, 3
        ), visit_buckets AS (
            INSERT INTO page_view_visit_buckets (site, bucket, visits, bounces, views, duration_us)
            SELECT site, bucket, count(*), count(*) FILTER (WHERE views = 1 AND events = 0), sum(views),
                   sum((extract(epoch FROM ended_at - started_at) * 1000000)::bigint)
              FROM formed GROUP BY 1, 2
        ), pages AS MATERIALIZED (
            SELECT site, bucket, 'entry' AS dim, entry_path AS value, count(*) AS visits FROM formed GROUP BY 1, 2, 4
            UNION ALL
            SELECT site, bucket, 'exit', exit_path, count(*) FROM formed GROUP BY 1, 2, 4
        ), bucket_pages AS (
            INSERT INTO page_view_bucket_dims (site, bucket, dim, value, views)
            SELECT site, bucket, dim, value, visits FROM pages
        )
        INSERT INTO page_view_daily_dims (site, day, dim, value, views)
        SELECT site, (bucket AT TIME ZONE 'UTC')::date, dim, value, sum(visits) FROM pages GROUP BY 1, 2, 3, 4;
    END LOOP;
END
$$;

-- The rollup by snapshot (migrations/0004 says why it is exact), folding every dimension, the
-- visitor days (migrations/0015) and the visits above.
CREATE OR REPLACE FUNCTION tally_rollup_page_views() RETURNS bigint LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    state page_view_rollup_state;
    snapshot pg_snapshot;
    folded bigint;
BEGIN
    SELECT * INTO state FROM page_view_rollup_state FOR UPDATE;
    snapshot := pg_current_snapshot();

    WITH fresh AS MATERIALIZED (
        SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket, visitor,
               path, referrer, source, medium, campaign, country, browser, os, device
          FROM page_views
         WHERE recorded_xid >= state.watermark AND pg_visible_in_snapshot(recorded_xid, snapshot)
        UNION ALL
        SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket, visitor,
               path, referrer, source, medium, campaign, country, browser, os, device
          FROM page_views
         WHERE recorded_xid = ANY (state.in_progress) AND pg_visible_in_snapshot(recorded_xid, snapshot)
    ), fresh_events AS MATERIALIZED (
        SELECT site, date_bin('15 minutes', occurred_at, '2000-01-01 00:00+00') AS bucket, visitor, name
          FROM events
         WHERE recorded_xid >= state.watermark AND pg_visible_in_snapshot(recorded_xid, snapshot)
        UNION ALL
        SELECT site, date_bin('15 minutes', occurred_at, '2000-01-01 00:00+00') AS bucket, visitor, name
          FROM events
         WHERE recorded_xid = ANY (state.in_progress) AND pg_visible_in_snapshot(recorded_xid, snapshot)
    ), grouped AS MATERIALIZED (
        -- One pass over the fresh views; the referrer's domain is parsed once per group.
        SELECT site, bucket, visitor, views, path, tally_referrer_domain(referrer, site) AS referrer,
               source, medium, campaign, country, browser, os, device
          FROM (SELECT site, bucket, visitor, path, referrer, source, medium, campaign, country, browser,
                       os, device, count(*) AS views
                  FROM fresh GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12) by_view
    ), valued AS MATERIALIZED (
        -- Each group once per dimension it has a value of. THE list of dimensions: one line each.
        SELECT site, bucket, visitor, views, dims.dim, dims.value
          FROM grouped
         CROSS JOIN LATERAL (VALUES
               ('path', path),
               ('referrer', referrer),
               ('source', source),
               ('medium', medium),
               ('campaign', campaign),
               ('country', country),
               ('browser', browser),
               ('os', os),
               ('device', device)) AS dims (dim, value)
         WHERE dims.value IS NOT NULL
        UNION ALL
        -- Events by name, as a dimension of their own (not a view's: no filter, no panel of views).
        SELECT site, bucket, visitor, count(*), 'event', name FROM fresh_events GROUP BY 1, 2, 3, 6
    ), buckets AS (
        INSERT INTO page_view_buckets (site, bucket, views)
        SELECT site, bucket, sum(views) FROM grouped GROUP BY 1, 2
        ON CONFLICT (site, bucket) DO UPDATE SET views = page_view_buckets.views + EXCLUDED.views
    ), visit_moves AS MATERIALIZED (
        -- Each (id, UTC day) with fresh views: its visits formed again, and those formed before.
        SELECT site, visitor, day, (visit).*, date_bin('15 minutes', (visit).started_at, '2000-01-01 00:00+00') AS bucket,
               delta
          FROM tally_visit_moves(ARRAY(
                   SELECT DISTINCT ROW(site, visitor, (bucket AT TIME ZONE 'UTC')::date)::tally_visitor_of_day
                     FROM (SELECT site, visitor, bucket FROM grouped
                           UNION ALL
                           SELECT site, visitor, bucket FROM fresh_events) fresh_ids
                    WHERE visitor IS NOT NULL), snapshot)
    ), visit_days AS (
        INSERT INTO page_view_visit_days (site, visitor, day, visits, folded_on)
        SELECT site, visitor, day,
               array_agg(ROW(started_at, ended_at, entry_path, exit_path, views, events)::tally_visit
                         ORDER BY started_at),
               (now() AT TIME ZONE 'UTC')::date
          FROM visit_moves WHERE delta = 1 GROUP BY 1, 2, 3
        ON CONFLICT (site, visitor, day) DO UPDATE SET visits = EXCLUDED.visits, folded_on = EXCLUDED.folded_on
    ), visit_buckets AS (
        INSERT INTO page_view_visit_buckets (site, bucket, visits, bounces, views, duration_us)
        SELECT site, bucket, sum(delta), coalesce(sum(delta) FILTER (WHERE views = 1 AND events = 0), 0), sum(delta * views),
               sum(delta * (extract(epoch FROM ended_at - started_at) * 1000000)::bigint)
          FROM visit_moves GROUP BY 1, 2
        ON CONFLICT (site, bucket) DO UPDATE
           SET visits = page_view_visit_buckets.visits + EXCLUDED.visits,
               bounces = page_view_visit_buckets.bounces + EXCLUDED.bounces,
               views = page_view_visit_buckets.views + EXCLUDED.views,
               duration_us = page_view_visit_buckets.duration_us + EXCLUDED.duration_us
    ), bucket_values AS MATERIALIZED (
        -- Views per dimension value, and visits per entry and exit page (their `views`).
        SELECT site, bucket, dim, value, sum(views)::bigint AS views
          FROM (SELECT site, bucket, dim, value, views FROM valued
                UNION ALL
                SELECT site, bucket, 'entry', entry_path, delta FROM visit_moves
                UNION ALL
                SELECT site, bucket, 'exit', exit_path, delta FROM visit_moves) counted
         GROUP BY 1, 2, 3, 4 HAVING sum(views) <> 0
    ), bucket_dims AS (
        INSERT INTO page_view_bucket_dims (site, bucket, dim, value, views)
        SELECT site, bucket, dim, value, views FROM bucket_values
        ON CONFLICT (site, bucket, dim, value) DO UPDATE SET views = page_view_bucket_dims.views + EXCLUDED.views
    ), daily_dims AS (
        INSERT INTO page_view_daily_dims (site, day, dim, value, views)
        SELECT site, (bucket AT TIME ZONE 'UTC')::date, dim, value, sum(views)
          FROM bucket_values GROUP BY 1, 2, 3, 4
        ON CONFLICT (site, day, dim, value) DO UPDATE SET views = page_view_daily_dims.views + EXCLUDED.views
    ), moves AS MATERIALIZED (
        -- Each id's fresh views per UTC day, for the whole site and per value, met with its rows.
        SELECT * FROM tally_visitor_day_moves(ARRAY(
            SELECT ROW(site, '', '', visitor, min(bucket), max(bucket))::tally_visitor_day
              FROM grouped WHERE visitor IS NOT NULL
             GROUP BY site, visitor, (bucket AT TIME ZONE 'UTC')::date
            UNION ALL
            SELECT ROW(site, dim, value, visitor, min(bucket), max(bucket))::tally_visitor_day
              FROM valued WHERE visitor IS NOT NULL
             GROUP BY site, dim, value, visitor, (bucket AT TIME ZONE 'UTC')::date))
    ), visitor_days AS (
        INSERT INTO page_view_visitor_days
               (site, dim, value, visitor, day, first_bucket, last_bucket, prev_last, folded_on)
        SELECT site, dim, value, visitor, day, first_bucket, last_bucket, prev_last, (now() AT TIME ZONE 'UTC')::date
          FROM moves
        ON CONFLICT (site, dim, value, visitor, day) DO UPDATE
           SET first_bucket = EXCLUDED.first_bucket, last_bucket = EXCLUDED.last_bucket,
               prev_last = EXCLUDED.prev_last, folded_on = EXCLUDED.folded_on
    ), day_counts AS (
        INSERT INTO page_view_visitor_day_counts (site, dim, value, first_bucket, last_bucket, prev_last, visitors)
        SELECT site, dim, value, first_bucket, last_bucket, prev_last, sum(delta)
          FROM (SELECT site, dim, value, first_bucket, last_bucket, prev_last, 1 AS delta FROM moves
                UNION ALL
                SELECT site, dim, value, old_first, old_last, old_prev, -1 FROM moves WHERE old_first IS NOT NULL) m
         GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(delta) <> 0
        ON CONFLICT (site, dim, value, first_bucket, last_bucket, prev_last) DO UPDATE
           SET visitors = page_view_visitor_day_counts.visitors + EXCLUDED.visitors
    )
    SELECT count(*) INTO folded FROM fresh;

    -- Rows no rollup changed for 3 days can go: an id from /api/collect brings no views after
    -- its salt's day. Under the state lock, so no rollup reads a row while it is deleted.
    DELETE FROM page_view_visitor_days WHERE folded_on < (now() AT TIME ZONE 'UTC')::date - 3;
    DELETE FROM page_view_visit_days WHERE folded_on < (now() AT TIME ZONE 'UTC')::date - 3;

    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded;
    RETURN folded;
END
$$;
