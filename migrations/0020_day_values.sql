-- Rollups smaller than what they roll up (issue 19, part 6). Migrations 0007 and 0015 kept,
-- per dimension value, a row per 15-minute bucket (views), a row per id and UTC day (its first
-- and last bucket, kept 3 days) and a row per (first, last, last the day before) triple of
-- buckets: with 5,000 paths about four times the bytes of the raw views, and most of the
-- rollup's time went into writing them.
--
-- Now one row per value and UTC day, `page_view_day_values`: the day's views, and a cell per
-- 15-minute bucket that has anything to count, four integers in one array: the bucket's number
-- in the day (0-95), its views, how many ids have their first view of the day (with this value)
-- in it, and how many their last. That is all the visitor days need: a local day meets at most
-- two UTC days (tests/test_visitor_days.py), the end of one and the start of the next, so an
-- id of a UTC day counts on the local day its first bucket is in when that is the local day
-- the UTC day starts in (the cell's `firsts`), and on the local day of its last bucket when that
-- is the next one (`lasts`): each id once per local day it has views on, summed per cell.
-- The one thing cells do not say: an id seen on two UTC days in a row counts twice on the
-- local day across the midnight between them. `page_view_day_overlaps` keeps those ids'
-- (first bucket, last bucket the day before) pairs, to take back; ids from /api/collect live
-- one day and have none.
--
-- The rollup finds how fresh views move an id's first and last bucket by reading the id's
-- views of those UTC days (and of the days beside) from page_views itself
-- (`tally_visitor_moves`), as the visits do (migration 0017): the raw views are the state, kept
-- RETENTION_DAYS, where the rows of 0015 were kept 3 days.

CREATE TABLE page_view_day_values (
    site text NOT NULL,
    dim text NOT NULL,  -- '' (with value '') for the whole site
    value text NOT NULL,
    day date NOT NULL,  -- UTC
    views bigint NOT NULL,
    -- {{bucket number in the day, views, firsts, lasts}, ...}, by bucket
    cells integer[] NOT NULL,
    -- The day first: stats rank a window of days (of one site or all), and a rollup writes
    -- mostly today's rows, at the index's end.
    PRIMARY KEY (day, site, dim, value)
);
-- The panels' top rows' visitors: a few values over a window of days.
CREATE INDEX page_view_day_values_value_idx ON page_view_day_values (dim, value, day);

CREATE TABLE page_view_day_overlaps (
    site text NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    first_bucket timestamptz NOT NULL,  -- the ids' first bucket of a UTC day
    prev_last timestamptz NOT NULL,  -- their last bucket of the UTC day before
    visitors bigint NOT NULL,
    PRIMARY KEY (site, dim, value, first_bucket, prev_last)
);
CREATE INDEX page_view_day_overlaps_first_bucket_idx ON page_view_day_overlaps (first_bucket);
CREATE INDEX page_view_day_overlaps_emptied_idx ON page_view_day_overlaps (site) WHERE visitors = 0;

-- A row's cells as rows, with the bucket's instant.
CREATE FUNCTION tally_cells(day date, cells integer[])
RETURNS TABLE (bucket timestamptz, views integer, firsts integer, lasts integer)
LANGUAGE sql STABLE AS $$
    SELECT day::timestamp AT TIME ZONE 'UTC' + cells[i][1] * interval '15 minutes', cells[i][2], cells[i][3],
           cells[i][4]
      FROM generate_subscripts(cells, 1) AS i
$$;

-- A row's views and visitors per local day (in `tz`) of its cells in [since, until): a cell
-- counts its `firsts` on the local day the UTC day starts in and its `lasts` on the next, which
-- starts at the one local midnight inside the UTC day (if any: `split`, a bucket number). A row
-- wholly inside the window is summed without looking at its cells' times.
CREATE FUNCTION tally_day_visitors(day date, cells integer[], tz text, since timestamptz, until timestamptz)
RETURNS TABLE (local_day date, views bigint, visitors bigint)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN c.slot < bounds.split THEN bounds.first_day ELSE bounds.first_day + 1 END,
           sum(c.views), sum(CASE WHEN c.slot < bounds.split THEN c.firsts ELSE c.lasts END)
      FROM (SELECT first_day, day::timestamp AT TIME ZONE 'UTC' AS starts,
                   extract(epoch FROM ((first_day + 1)::timestamp AT TIME ZONE tz) - day::timestamp AT TIME ZONE 'UTC')
                       / 900 AS split
              FROM (SELECT ((day::timestamp AT TIME ZONE 'UTC') AT TIME ZONE tz)::date AS first_day) AS utc_day
           ) AS bounds,
           LATERAL (SELECT cells[i][1] AS slot, cells[i][2] AS views, cells[i][3] AS firsts, cells[i][4] AS lasts
                      FROM generate_subscripts(cells, 1) AS i) AS c
     WHERE (bounds.starts >= since AND bounds.starts + interval '1 day' <= until)
        OR (bounds.starts + c.slot * interval '15 minutes' >= since
            AND bounds.starts + c.slot * interval '15 minutes' < until)
     GROUP BY 1
$$;

-- Two rows' cells added up, cells that come to nothing left out.
CREATE FUNCTION tally_add_cells(held integer[], added integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(ARRAY[slot, views, firsts, lasts] ORDER BY slot), '{}')
      FROM (SELECT cell[1] AS slot, sum(cell[2])::integer AS views, sum(cell[3])::integer AS firsts,
                   sum(cell[4])::integer AS lasts
              FROM (SELECT ARRAY[a[i][1], a[i][2], a[i][3], a[i][4]] AS cell
                      FROM (VALUES (held), (added)) AS both_rows (a), generate_subscripts(a, 1) AS i) cells
             GROUP BY 1
            HAVING sum(cell[2]) <> 0 OR sum(cell[3]) <> 0 OR sum(cell[4]) <> 0) summed
$$;

-- How the views and events of some (site, id, UTC day)s move the ids' first and last buckets,
-- per dimension value ('' for the whole site): the views `snapshot` sees (all, when NULL) against
-- those folded at (watermark, in_progress). Rows with prev_last NULL move a cell: -1 where the
-- first (last) bucket was, +1 where it is; rows with prev_last move an overlap pair. The days
-- beside each one are read too: a day's first bucket pairs with the last of the day before.
CREATE FUNCTION tally_visitor_moves(days tally_visitor_of_day[], watermark xid8, in_progress xid8[], snapshot pg_snapshot)
RETURNS TABLE (site text, dim text, value text, bucket timestamptz, prev_last timestamptz, firsts integer,
               lasts integer, pairs integer)
LANGUAGE sql STABLE AS $$
    WITH wanted AS (
        -- In order, so the views come out of the index in order and the spans below sort
        -- little groups (an id's views of a day), not all views at once.
        SELECT DISTINCT d.site, d.visitor, d.day + shift AS day
          FROM unnest(days) AS d CROSS JOIN (VALUES (-1), (0), (1)) AS shifts (shift)
         ORDER BY 1, 2, 3
    ), seen AS (
        SELECT v.site, v.visitor, w.day, date_bin('15 minutes', v.viewed_at, '2000-01-01 00:00+00') AS bucket,
               v.recorded_xid < watermark AND v.recorded_xid <> ALL (in_progress) AS folded,
               v.path, tally_referrer_domain(v.referrer, v.site) AS referrer, v.source, v.medium, v.campaign,
               v.country, v.browser, v.os, v.device
          FROM wanted w
          JOIN page_views v
            ON v.site = w.site AND v.visitor = w.visitor
           AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
         WHERE v.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(v.recorded_xid, snapshot))
    ), view_spans AS (
        -- Per id, UTC day and value: its first and last bucket of all views, and of those folded.
        -- THE list of dimensions again (tests/test_audience.py keeps it equal to tally/dimensions.py).
        SELECT seen.site, seen.visitor, seen.day, dims.dim, dims.value,
               min(seen.bucket) AS new_first, max(seen.bucket) AS new_last,
               min(seen.bucket) FILTER (WHERE folded) AS old_first, max(seen.bucket) FILTER (WHERE folded) AS old_last
          FROM seen
         CROSS JOIN LATERAL (VALUES
               ('', ''),
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
         GROUP BY seen.site, seen.visitor, seen.day, dims.dim, dims.value
    ), event_spans AS (
        SELECT e.site, e.visitor, w.day, 'event' AS dim, e.name AS value,
               min(date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00')) AS new_first,
               max(date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00')) AS new_last,
               min(date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00'))
                   FILTER (WHERE e.recorded_xid < watermark AND e.recorded_xid <> ALL (in_progress)) AS old_first,
               max(date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00'))
                   FILTER (WHERE e.recorded_xid < watermark AND e.recorded_xid <> ALL (in_progress)) AS old_last
          FROM wanted w
          JOIN events e
            ON e.site = w.site AND e.visitor = w.visitor
           AND e.occurred_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND e.occurred_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
         WHERE e.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, snapshot))
         GROUP BY 1, 2, 3, 4, 5
    ), spans AS MATERIALIZED (
        SELECT * FROM view_spans UNION ALL SELECT * FROM event_spans
    ), paired AS (
        -- The spans of ids seen on more than one of the days read (few: ids from /api/collect
        -- live one day), each with the same value's last bucket the UTC day before, as it was and is.
        SELECT spans.*,
               CASE WHEN lag(spans.day) OVER same_value = spans.day - 1 THEN lag(spans.new_last) OVER same_value END
                   AS prev_new,
               CASE WHEN lag(spans.day) OVER same_value = spans.day - 1 THEN lag(spans.old_last) OVER same_value END
                   AS prev_old
          FROM spans
         WHERE (spans.site, spans.visitor) IN (SELECT site, visitor FROM spans GROUP BY 1, 2 HAVING min(day) < max(day))
        WINDOW same_value AS (PARTITION BY spans.site, spans.visitor, spans.dim, spans.value ORDER BY spans.day)
    )
    SELECT moved.site, moved.dim, moved.value, moved.bucket, NULL::timestamptz, sum(moved.firsts)::integer,
           sum(moved.lasts)::integer, 0
      FROM (SELECT spans.site, spans.dim, spans.value, new_first AS bucket, 1 AS firsts, 0 AS lasts
              FROM spans WHERE new_first IS DISTINCT FROM old_first
            UNION ALL
            SELECT spans.site, spans.dim, spans.value, old_first, -1, 0 FROM spans WHERE old_first <> new_first
            UNION ALL
            SELECT spans.site, spans.dim, spans.value, new_last, 0, 1 FROM spans WHERE new_last IS DISTINCT FROM old_last
            UNION ALL
            SELECT spans.site, spans.dim, spans.value, old_last, 0, -1 FROM spans WHERE old_last <> new_last) moved
     GROUP BY 1, 2, 3, 4
    HAVING sum(moved.firsts) <> 0 OR sum(moved.lasts) <> 0
    UNION ALL
    SELECT paired.site, paired.dim, paired.value, pair.bucket, pair.prev_last, 0, 0, sum(pair.pairs)::integer
      FROM paired,
           LATERAL (VALUES (paired.new_first, paired.prev_new, 1), (paired.old_first, paired.prev_old, -1))
               AS pair (bucket, prev_last, pairs)
     WHERE pair.bucket IS NOT NULL AND pair.prev_last IS NOT NULL
       AND (paired.new_first, paired.prev_new) IS DISTINCT FROM (paired.old_first, paired.prev_old)
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(pair.pairs) <> 0
$$;

-- What the tables of 0007 and 0015 held comes over: views per bucket become cells, each
-- (first, last, last the day before) triple one id's firsts and lasts and, with a day before,
-- an overlap pair. The whole site's views come from page_view_buckets.
LOCK TABLE page_view_rollup_state IN EXCLUSIVE MODE;

WITH cells AS (
    SELECT site, dim, value, bucket, sum(views)::integer AS views, sum(firsts)::integer AS firsts,
           sum(lasts)::integer AS lasts
      FROM (SELECT site, dim, value, bucket, views, 0 AS firsts, 0 AS lasts FROM page_view_bucket_dims
            UNION ALL
            SELECT site, '', '', bucket, views, 0, 0 FROM page_view_buckets
            UNION ALL
            SELECT site, dim, value, first_bucket, 0, visitors, 0 FROM page_view_visitor_day_counts
            UNION ALL
            SELECT site, dim, value, last_bucket, 0, 0, visitors FROM page_view_visitor_day_counts) counted
     GROUP BY 1, 2, 3, 4
    HAVING sum(views) <> 0 OR sum(firsts) <> 0 OR sum(lasts) <> 0
), cell_days AS (
    SELECT site, dim, value, (bucket AT TIME ZONE 'UTC')::date AS day,
           array_agg(ARRAY[(extract(epoch FROM bucket - date_trunc('day', bucket, 'UTC')) / 900)::integer,
                           views, firsts, lasts] ORDER BY bucket) AS cells
      FROM cells GROUP BY 1, 2, 3, 4
), view_days AS (
    SELECT site, dim, value, day, sum(views) AS views
      FROM (SELECT site, dim, value, day, views FROM page_view_daily_dims
            UNION ALL
            SELECT site, '', '', (bucket AT TIME ZONE 'UTC')::date, views FROM page_view_buckets) counted
     GROUP BY 1, 2, 3, 4
)
INSERT INTO page_view_day_values (site, dim, value, day, views, cells)
SELECT site, dim, value, day, coalesce(v.views, 0), coalesce(c.cells, '{}')
  FROM view_days v FULL JOIN cell_days c USING (site, dim, value, day)
 ORDER BY day, site, dim, value;

INSERT INTO page_view_day_overlaps (site, dim, value, first_bucket, prev_last, visitors)
SELECT site, dim, value, first_bucket, prev_last, sum(visitors)
  FROM page_view_visitor_day_counts
 WHERE prev_last > '-infinity'
 GROUP BY 1, 2, 3, 4, 5;

DROP TABLE page_view_bucket_dims, page_view_daily_dims, page_view_visitor_days, page_view_visitor_day_counts;
DROP FUNCTION tally_visitor_day_moves(tally_visitor_day[]);
DROP TYPE tally_visitor_day;

CREATE OR REPLACE FUNCTION tally_rollup_page_views() RETURNS bigint LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET jit = off
SET work_mem = '64MB'
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
                       os, device, count(*)::integer AS views
                  FROM fresh GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12) by_view
    ), fresh_ids AS MATERIALIZED (
        -- Each (id, UTC day) with fresh views or events.
        SELECT ARRAY(SELECT DISTINCT ROW(site, visitor, (bucket AT TIME ZONE 'UTC')::date)::tally_visitor_of_day
                       FROM (SELECT site, visitor, bucket FROM grouped
                             UNION ALL
                             SELECT site, visitor, bucket FROM fresh_events) with_ids
                      WHERE visitor IS NOT NULL) AS days
    ), site_buckets AS MATERIALIZED (
        SELECT site, bucket, sum(views)::bigint AS views FROM grouped GROUP BY 1, 2
    ), buckets AS (
        INSERT INTO page_view_buckets (site, bucket, views)
        SELECT site, bucket, views FROM site_buckets
        ON CONFLICT (site, bucket) DO UPDATE SET views = page_view_buckets.views + EXCLUDED.views
    ), visit_moves AS MATERIALIZED (
        -- Each (id, UTC day) with fresh views: its visits formed again, and those formed before.
        SELECT site, visitor, day, (visit).*, date_bin('15 minutes', (visit).started_at, '2000-01-01 00:00+00') AS bucket,
               delta
          FROM tally_visit_moves((SELECT days FROM fresh_ids), snapshot)
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
    ), visitor_moves AS MATERIALIZED (
        SELECT * FROM tally_visitor_moves((SELECT days FROM fresh_ids), state.watermark, state.in_progress, snapshot)
    ), cells AS MATERIALIZED (
        -- Per value and bucket: views, and visits per entry and exit page (their `views`), and
        -- how the ids' first and last buckets moved.
        SELECT site, dim, value, bucket, sum(views)::integer AS views, sum(firsts)::integer AS firsts,
               sum(lasts)::integer AS lasts
          FROM (SELECT site, dims.dim, dims.value, bucket, views, 0 AS firsts, 0 AS lasts
                  FROM grouped
                 CROSS JOIN LATERAL (VALUES
                       -- Each group once per dimension it has a value of. THE list of dimensions: one line each.
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
                SELECT site, '', '', bucket, views::integer, 0, 0 FROM site_buckets
                UNION ALL
                -- Events by name, as a dimension of their own (not a view's: no filter, no panel of views).
                SELECT site, 'event', name, bucket, 1, 0, 0 FROM fresh_events
                UNION ALL
                SELECT site, 'entry', entry_path, bucket, delta, 0, 0 FROM visit_moves
                UNION ALL
                SELECT site, 'exit', exit_path, bucket, delta, 0, 0 FROM visit_moves
                UNION ALL
                SELECT site, dim, value, bucket, 0, firsts, lasts FROM visitor_moves WHERE prev_last IS NULL) counted
         GROUP BY 1, 2, 3, 4
        HAVING sum(views) <> 0 OR sum(firsts) <> 0 OR sum(lasts) <> 0
    ), day_values AS (
        INSERT INTO page_view_day_values (site, dim, value, day, views, cells)
        SELECT site, dim, value, (bucket AT TIME ZONE 'UTC')::date, sum(views),
               array_agg(ARRAY[(extract(epoch FROM bucket - date_trunc('day', bucket, 'UTC')) / 900)::integer,
                               views, firsts, lasts] ORDER BY bucket)
          FROM cells GROUP BY 4, 1, 2, 3  -- in the primary key's order: the index fills page by page
        ON CONFLICT (site, dim, value, day) DO UPDATE
           SET views = page_view_day_values.views + EXCLUDED.views,
               cells = tally_add_cells(page_view_day_values.cells, EXCLUDED.cells)
    ), overlap_pairs AS (
        INSERT INTO page_view_day_overlaps (site, dim, value, first_bucket, prev_last, visitors)
        SELECT site, dim, value, bucket, prev_last, sum(pairs)
          FROM visitor_moves WHERE prev_last IS NOT NULL
         GROUP BY 1, 2, 3, 4, 5 HAVING sum(pairs) <> 0
        ON CONFLICT (site, dim, value, first_bucket, prev_last) DO UPDATE
           SET visitors = page_view_day_overlaps.visitors + EXCLUDED.visitors
    )
    SELECT count(*) INTO folded FROM fresh;

    DELETE FROM page_view_day_overlaps WHERE visitors = 0;
    -- Visits no rollup changed for 3 days can go: an id from /api/collect brings no views after
    -- its salt's day. Under the state lock, so no rollup reads a row while it is deleted.
    DELETE FROM page_view_visit_days WHERE folded_on < (now() AT TIME ZONE 'UTC')::date - 3;

    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded;
    RETURN folded;
END
$$;
