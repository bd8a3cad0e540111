-- Visitors exact for any data (issue 18, part 0). `visitors` is the sum of each day's distinct
-- visitor ids. Migrations 0005 and 0007 kept each id's span (its first and last bucket) and
-- counted it on every day the span met: exact while an id lives one day, as ids from
-- /api/collect do, but an id seen on the 1st and the 30th (a backfill, an import, a salt that
-- did not rotate) counted on every day between.
--
-- Now an id's views are kept apart per UTC day: its first and last bucket that day, and its
-- last bucket the UTC day before. A day D in a zone meets at most two UTC days (every zone in
-- use; tests/test_visitor_days.py checks the zone database), as a suffix of one and a prefix of
-- the next, or one whole, so an id has a view on D exactly when one of its UTC days has its first
-- or last view on D, and the only day two UTC days of one id can share is the one across
-- the UTC midnight between them. So a UTC day of an id counts on the local days of its first
-- and last bucket, except the local day of the day before's last bucket, already counted
-- (tally/web/windows.py, count_days). Exact in every zone, DST days included.
--
-- Per id that is a row per UTC day (as before for ids from /api/collect: they live one day);
-- what the stats read is how many ids share a (first, last, last the day before) triple: a few
-- rows per pair of buckets, as before. The whole site is the row with dim '' and value ''.

CREATE TABLE page_view_visitor_days (
    site text NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    visitor bigint NOT NULL,
    day date NOT NULL,  -- UTC
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    -- the id's last bucket (with this value) the UTC day before; -infinity for none
    prev_last timestamptz NOT NULL,
    -- the UTC day a rollup last changed the row: kept 3 days after, so views of one id folded
    -- by several rollups (a backfill in chunks, a late beacon) meet their earlier ones
    folded_on date NOT NULL,
    PRIMARY KEY (site, dim, value, visitor, day)
);
CREATE INDEX page_view_visitor_days_folded_on_idx ON page_view_visitor_days (folded_on);

CREATE TABLE page_view_visitor_day_counts (
    site text NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    prev_last timestamptz NOT NULL,
    visitors bigint NOT NULL,
    PRIMARY KEY (site, dim, value, first_bucket, last_bucket, prev_last)
);
CREATE INDEX page_view_visitor_day_counts_value_idx ON page_view_visitor_day_counts (dim, value, first_bucket);
CREATE INDEX page_view_visitor_day_counts_first_bucket_idx ON page_view_visitor_day_counts (first_bucket);

-- What the span tables held comes over. A span within one UTC day (every id from /api/collect)
-- is that day's row, exactly. A span across UTC days (a backfill before this migration) is
-- unknown between its ends: it becomes its first bucket's day and its last bucket's day.
CREATE FUNCTION pg_temp.span_days(first_bucket timestamptz, last_bucket timestamptz)
RETURNS TABLE (day date, first_bucket timestamptz, last_bucket timestamptz, prev_last timestamptz)
LANGUAGE sql IMMUTABLE AS $$
    SELECT (first_bucket AT TIME ZONE 'UTC')::date, first_bucket,
           CASE WHEN (first_bucket AT TIME ZONE 'UTC')::date = (last_bucket AT TIME ZONE 'UTC')::date
                THEN last_bucket ELSE first_bucket END,
           '-infinity'::timestamptz
    UNION ALL
    SELECT (last_bucket AT TIME ZONE 'UTC')::date, last_bucket, last_bucket,
           CASE WHEN (first_bucket AT TIME ZONE 'UTC')::date + 1 = (last_bucket AT TIME ZONE 'UTC')::date
                THEN first_bucket ELSE '-infinity' END
     WHERE (first_bucket AT TIME ZONE 'UTC')::date < (last_bucket AT TIME ZONE 'UTC')::date
$$;

INSERT INTO page_view_visitor_days (site, dim, value, visitor, day, first_bucket, last_bucket, prev_last, folded_on)
SELECT known.site, '', '', known.visitor, d.day, d.first_bucket, d.last_bucket, d.prev_last,
       (now() AT TIME ZONE 'UTC')::date
  FROM page_view_visitors known, pg_temp.span_days(known.first_bucket, known.last_bucket) d
UNION ALL
SELECT known.site, known.dim, known.value, known.visitor, d.day, d.first_bucket, d.last_bucket, d.prev_last,
       (now() AT TIME ZONE 'UTC')::date
  FROM page_view_dim_visitors known, pg_temp.span_days(known.first_bucket, known.last_bucket) d;

INSERT INTO page_view_visitor_day_counts (site, dim, value, first_bucket, last_bucket, prev_last, visitors)
SELECT site, dim, value, first_bucket, last_bucket, prev_last, sum(visitors)
  FROM (SELECT spans.site, '' AS dim, '' AS value, d.first_bucket, d.last_bucket, d.prev_last, spans.visitors
          FROM page_view_visitor_spans spans, pg_temp.span_days(spans.first_bucket, spans.last_bucket) d
        UNION ALL
        SELECT spans.site, spans.dim, spans.value, d.first_bucket, d.last_bucket, d.prev_last, spans.visitors
          FROM page_view_dim_visitor_spans spans, pg_temp.span_days(spans.first_bucket, spans.last_bucket) d) moved
 GROUP BY 1, 2, 3, 4, 5, 6;

DROP TABLE page_view_visitors, page_view_visitor_spans, page_view_dim_visitors, page_view_dim_visitor_spans;

-- One id's views of one UTC day, with one dimension value ('' for the whole site): what a
-- rollup (or a stats request's tail) has seen of it.
CREATE TYPE tally_visitor_day AS (
    site text,
    dim text,
    value text,
    visitor bigint,
    first_bucket timestamptz,
    last_bucket timestamptz
);

-- How the visitor-day rows change when `seen` joins what they hold: each row that moves, as it
-- is to be (first, last, prev_last) and as it was (old_*; NULL for a new row). A row moves when
-- its own day grows, or when the day before gains a later last bucket. The rollup writes these
-- moves; a stats request counts them over its snapshot without writing. `seen` must hold one
-- element per (site, dim, value, visitor, UTC day).
CREATE FUNCTION tally_visitor_day_moves(seen tally_visitor_day[])
RETURNS TABLE (site text, dim text, value text, visitor bigint, day date,
               first_bucket timestamptz, last_bucket timestamptz, prev_last timestamptz,
               old_first timestamptz, old_last timestamptz, old_prev timestamptz)
LANGUAGE sql STABLE AS $$
    WITH fresh AS (
        SELECT s.site, s.dim, s.value, s.visitor, (s.first_bucket AT TIME ZONE 'UTC')::date AS day,
               s.first_bucket, s.last_bucket
          FROM unnest(seen) AS s
    ), merged AS (
        SELECT f.site, f.dim, f.value, f.visitor, f.day,
               least(f.first_bucket, k.first_bucket) AS first_bucket,
               greatest(f.last_bucket, k.last_bucket) AS last_bucket,
               k.first_bucket AS old_first, k.last_bucket AS old_last, k.prev_last AS old_prev
          FROM fresh f
          LEFT JOIN page_view_visitor_days k
            ON k.site = f.site AND k.dim = f.dim AND k.value = f.value AND k.visitor = f.visitor
           AND k.day = f.day
    ), touched AS (
        SELECT * FROM merged
        UNION ALL
        -- the known day after one whose last bucket moved, unless it is fresh itself
        SELECT k.site, k.dim, k.value, k.visitor, k.day, k.first_bucket, k.last_bucket,
               k.first_bucket, k.last_bucket, k.prev_last
          FROM merged m
          JOIN page_view_visitor_days k
            ON k.site = m.site AND k.dim = m.dim AND k.value = m.value AND k.visitor = m.visitor
           AND k.day = m.day + 1
         WHERE m.last_bucket IS DISTINCT FROM m.old_last
           AND NOT EXISTS (SELECT FROM fresh f
                            WHERE f.site = m.site AND f.dim = m.dim AND f.value = m.value
                              AND f.visitor = m.visitor AND f.day = m.day + 1)
    ), moved AS (
        -- a day's prev_last only grows: the greatest of what it held, the day before as merged
        -- now, and (for a new row) the day before as the rollups know it
        SELECT t.*, coalesce(greatest(t.old_prev, before.last_bucket, known.last_bucket), '-infinity') AS prev_last
          FROM touched t
          LEFT JOIN merged before
            ON before.site = t.site AND before.dim = t.dim AND before.value = t.value
           AND before.visitor = t.visitor AND before.day = t.day - 1
          LEFT JOIN page_view_visitor_days known
            ON t.old_first IS NULL AND known.site = t.site AND known.dim = t.dim AND known.value = t.value
           AND known.visitor = t.visitor AND known.day = t.day - 1
    )
    SELECT site, dim, value, visitor, day, first_bucket, last_bucket, prev_last, old_first, old_last, old_prev
      FROM moved
     WHERE old_first IS NULL OR first_bucket <> old_first OR last_bucket <> old_last OR prev_last <> old_prev
$$;

-- The rollup by snapshot (migrations/0004 says why it is exact), folding every dimension and
-- the visitor days above.
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
    ), buckets AS (
        INSERT INTO page_view_buckets (site, bucket, views)
        SELECT site, bucket, sum(views) FROM grouped GROUP BY 1, 2
        ON CONFLICT (site, bucket) DO UPDATE SET views = page_view_buckets.views + EXCLUDED.views
    ), bucket_values AS MATERIALIZED (
        SELECT site, bucket, dim, value, sum(views)::bigint AS views FROM valued GROUP BY 1, 2, 3, 4
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

    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded;
    RETURN folded;
END
$$;
