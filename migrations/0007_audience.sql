-- Where visitors come from and what they use (issue 17): each view gains its campaign's
-- medium and name, its country, browser, operating system and device, and every dimension
-- of a view is rolled up the same way, in one set of tables keyed by (dimension, value).
--
-- The dimensions are listed in tally/dimensions.py; the rollup below names the same ones in
-- one VALUES list (tests/test_dimensions.py checks that the two agree).

-- Nothing here is personal: a country code from the client's address, family names from the
-- user agent, a size class from the window's width. The address and the agent are not kept.
-- Constant defaults (NULL): the columns are added without rewriting the table.
ALTER TABLE page_views
    ADD COLUMN medium text CHECK (length(medium) <= 256),
    ADD COLUMN campaign text CHECK (length(campaign) <= 256),
    ADD COLUMN country text CHECK (country ~ '^[A-Z]{2}$'),
    ADD COLUMN browser text CHECK (length(browser) <= 64),
    ADD COLUMN os text CHECK (length(os) <= 64),
    ADD COLUMN device text CHECK (device IN ('phone', 'tablet', 'laptop', 'desktop'));

-- Views per site, UTC day, dimension and value: the inside of any window.
CREATE TABLE page_view_daily_dims (
    site text NOT NULL,
    day date NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, day, dim, value)
);
CREATE INDEX page_view_daily_dims_day_idx ON page_view_daily_dims (day);

-- The same per 15-minute bucket: the UTC day a window in another zone starts (or ends) inside.
CREATE TABLE page_view_bucket_dims (
    site text NOT NULL,
    bucket timestamptz NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, bucket, dim, value)
);
CREATE INDEX page_view_bucket_dims_bucket_idx ON page_view_bucket_dims (bucket);

-- Each (visitor id, dimension value)'s first and last bucket, while the id may still bring
-- views (3 days), and how many ids were seen from one bucket to another per value: visitors
-- per day and value in any zone, as page_view_visitors/_visitor_spans do for the whole site.
CREATE TABLE page_view_dim_visitors (
    site text NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    visitor bigint NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    PRIMARY KEY (site, dim, value, visitor)
);
CREATE INDEX page_view_dim_visitors_last_bucket_idx ON page_view_dim_visitors (last_bucket);
CREATE TABLE page_view_dim_visitor_spans (
    site text NOT NULL,
    dim text NOT NULL,
    value text NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    visitors bigint NOT NULL,
    PRIMARY KEY (site, dim, value, first_bucket, last_bucket)
);
CREATE INDEX page_view_dim_visitor_spans_value_idx ON page_view_dim_visitor_spans (dim, value, first_bucket);
CREATE INDEX page_view_dim_visitor_spans_first_bucket_idx ON page_view_dim_visitor_spans (first_bucket);

-- What the per-dimension tables of migration 0005 held comes over. (Sources and referring
-- domains had no visitors per value before: their rows from before this migration count views.)
INSERT INTO page_view_daily_dims (site, day, dim, value, views)
SELECT site, day, 'path', path, views FROM page_view_daily_paths
UNION ALL SELECT site, day, 'source', source, views FROM page_view_daily_sources
UNION ALL SELECT site, day, 'referrer', domain, views FROM page_view_daily_referrers;
INSERT INTO page_view_bucket_dims (site, bucket, dim, value, views)
SELECT site, bucket, 'path', path, views FROM page_view_bucket_paths
UNION ALL SELECT site, bucket, 'source', source, views FROM page_view_bucket_sources
UNION ALL SELECT site, bucket, 'referrer', domain, views FROM page_view_bucket_referrers;
INSERT INTO page_view_dim_visitors (site, dim, value, visitor, first_bucket, last_bucket)
SELECT site, 'path', path, visitor, first_bucket, last_bucket FROM page_view_path_visitors;
INSERT INTO page_view_dim_visitor_spans (site, dim, value, first_bucket, last_bucket, visitors)
SELECT site, 'path', path, first_bucket, last_bucket, visitors FROM page_view_path_visitor_spans;
DROP TABLE page_view_daily_paths, page_view_daily_sources, page_view_daily_referrers,
    page_view_bucket_paths, page_view_bucket_sources, page_view_bucket_referrers,
    page_view_path_visitors, page_view_path_visitor_spans;

-- The rollup by snapshot (migrations/0004 says why it is exact), folding every dimension.
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
    ), seen AS (
        -- Each visitor's span grows by its fresh views; its old span (if any) is replaced.
        SELECT fresh_ids.site, fresh_ids.visitor,
               least(fresh_ids.first_bucket, known.first_bucket) AS first_bucket,
               greatest(fresh_ids.last_bucket, known.last_bucket) AS last_bucket,
               known.first_bucket AS old_first, known.last_bucket AS old_last
          FROM (SELECT site, visitor, min(bucket) AS first_bucket, max(bucket) AS last_bucket
                  FROM grouped WHERE visitor IS NOT NULL GROUP BY 1, 2) fresh_ids
          LEFT JOIN page_view_visitors known
            ON known.site = fresh_ids.site AND known.visitor = fresh_ids.visitor
    ), changed AS (
        SELECT * FROM seen
         WHERE old_first IS NULL OR first_bucket <> old_first OR last_bucket <> old_last
    ), visitors AS (
        INSERT INTO page_view_visitors (site, visitor, first_bucket, last_bucket)
        SELECT site, visitor, first_bucket, last_bucket FROM changed
        ON CONFLICT (site, visitor) DO UPDATE
           SET first_bucket = EXCLUDED.first_bucket, last_bucket = EXCLUDED.last_bucket
    ), spans AS (
        INSERT INTO page_view_visitor_spans (site, first_bucket, last_bucket, visitors)
        SELECT site, first_bucket, last_bucket, sum(delta)
          FROM (SELECT site, first_bucket, last_bucket, 1 AS delta FROM changed
                UNION ALL
                SELECT site, old_first, old_last, -1 FROM changed WHERE old_first IS NOT NULL) moves
         GROUP BY 1, 2, 3 HAVING sum(delta) <> 0
        ON CONFLICT (site, first_bucket, last_bucket) DO UPDATE
           SET visitors = page_view_visitor_spans.visitors + EXCLUDED.visitors
    ), dim_seen AS (
        -- The same, per dimension value.
        SELECT fresh_ids.site, fresh_ids.dim, fresh_ids.value, fresh_ids.visitor,
               least(fresh_ids.first_bucket, known.first_bucket) AS first_bucket,
               greatest(fresh_ids.last_bucket, known.last_bucket) AS last_bucket,
               known.first_bucket AS old_first, known.last_bucket AS old_last
          FROM (SELECT site, dim, value, visitor, min(bucket) AS first_bucket, max(bucket) AS last_bucket
                  FROM valued WHERE visitor IS NOT NULL GROUP BY 1, 2, 3, 4) fresh_ids
          LEFT JOIN page_view_dim_visitors known
            ON known.site = fresh_ids.site AND known.dim = fresh_ids.dim AND known.value = fresh_ids.value
           AND known.visitor = fresh_ids.visitor
    ), dim_changed AS (
        SELECT * FROM dim_seen
         WHERE old_first IS NULL OR first_bucket <> old_first OR last_bucket <> old_last
    ), dim_visitors AS (
        INSERT INTO page_view_dim_visitors (site, dim, value, visitor, first_bucket, last_bucket)
        SELECT site, dim, value, visitor, first_bucket, last_bucket FROM dim_changed
        ON CONFLICT (site, dim, value, visitor) DO UPDATE
           SET first_bucket = EXCLUDED.first_bucket, last_bucket = EXCLUDED.last_bucket
    ), dim_spans AS (
        INSERT INTO page_view_dim_visitor_spans (site, dim, value, first_bucket, last_bucket, visitors)
        SELECT site, dim, value, first_bucket, last_bucket, sum(delta)
          FROM (SELECT site, dim, value, first_bucket, last_bucket, 1 AS delta FROM dim_changed
                UNION ALL
                SELECT site, dim, value, old_first, old_last, -1 FROM dim_changed WHERE old_first IS NOT NULL) moves
         GROUP BY 1, 2, 3, 4, 5 HAVING sum(delta) <> 0
        ON CONFLICT (site, dim, value, first_bucket, last_bucket) DO UPDATE
           SET visitors = page_view_dim_visitor_spans.visitors + EXCLUDED.visitors
    )
    SELECT count(*) INTO folded FROM fresh;

    -- Visitor ids whose salt is long gone bring no more views: their rows can go. Under the
    -- state lock, so no rollup reads a row while it is deleted.
    DELETE FROM page_view_visitors WHERE last_bucket < now() - interval '3 days';
    DELETE FROM page_view_dim_visitors WHERE last_bucket < now() - interval '3 days';

    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded;
    RETURN folded;
END
$$;
