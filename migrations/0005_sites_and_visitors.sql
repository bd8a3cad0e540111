-- Views from real websites (issue 11): each view knows its site, its campaign source and
-- its visitor, and the rollups keep them per site, per 15 minutes.
--
-- Why 15-minute buckets: every time zone in use is a whole number of quarter hours off UTC
-- (Asia/Kathmandu +5:45, Australia/Adelaide +9:30), so a day in any zone is a whole set of
-- buckets, and daily views and visitors stay exact in the owner's zone (docs/ARCHITECTURE.md,
-- "Sites and visitors").

-- The default site is what server-side senders and plain `INSERT INTO page_views (path,
-- viewed_at)` get when they name none (tally/web/pageviews.py DEFAULT_SITE says the same).
-- A constant default adds the column without rewriting the table.
ALTER TABLE page_views
    ADD COLUMN site text NOT NULL DEFAULT 'default'
        CHECK (site <> '' AND length(site) <= 253 AND site = lower(site)),
    -- utm_source (or ref, source) of the page's URL: the campaign that brought the view.
    ADD COLUMN source text CHECK (length(source) <= 256),
    -- A keyed hash (HMAC-SHA256 of the day's salt, the site, the client's address and user
    -- agent, first 8 bytes): the same person on the same day and site, and nothing else.
    -- NULL for views that did not come through /api/collect.
    ADD COLUMN visitor bigint;

COMMENT ON COLUMN page_views.visitor IS
    'keyed hash of the day''s salt, site, client address and user agent; no address or agent is stored';

-- Views per site and 15-minute bucket (UTC-aligned): daily totals in any zone, the last 24 h.
CREATE TABLE page_view_buckets (
    site text NOT NULL,
    bucket timestamptz NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, bucket)
);
CREATE INDEX page_view_buckets_bucket_idx ON page_view_buckets (bucket);
-- Hours rolled up before sites existed: their views were all the default site's.
INSERT INTO page_view_buckets (site, bucket, views) SELECT 'default', hour, views FROM page_view_hourly;
DROP TABLE page_view_hourly;

-- The top lists (paths, sources, referring domains) are kept twice: per UTC day, which the
-- inside of any window sums, and per 15-minute bucket, for the one UTC day a window in another
-- zone starts inside (its local midnight is not UTC's).

-- Views per site, UTC day and path (top paths), now per site too.
ALTER TABLE page_view_daily_paths ADD COLUMN site text NOT NULL DEFAULT 'default';
ALTER TABLE page_view_daily_paths ALTER COLUMN site DROP DEFAULT;
ALTER TABLE page_view_daily_paths
    DROP CONSTRAINT page_view_daily_paths_pkey,
    ADD PRIMARY KEY (site, day, path);
CREATE INDEX page_view_daily_paths_day_idx ON page_view_daily_paths (day);

-- Views per site, bucket and path. Days rolled up before sites existed have no finer grain
-- than the day: they come over on the day's first bucket.
CREATE TABLE page_view_bucket_paths (
    site text NOT NULL,
    bucket timestamptz NOT NULL,
    path text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, bucket, path)
);
CREATE INDEX page_view_bucket_paths_bucket_idx ON page_view_bucket_paths (bucket);
INSERT INTO page_view_bucket_paths (site, bucket, path, views)
SELECT site, day::timestamp AT TIME ZONE 'UTC', path, views FROM page_view_daily_paths;

-- Views per site, UTC day and source (utm_source, ref or source of the page's URL).
CREATE TABLE page_view_daily_sources (
    site text NOT NULL,
    day date NOT NULL,
    source text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, day, source)
);
CREATE INDEX page_view_daily_sources_day_idx ON page_view_daily_sources (day);
CREATE TABLE page_view_bucket_sources (
    site text NOT NULL,
    bucket timestamptz NOT NULL,
    source text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, bucket, source)
);
CREATE INDEX page_view_bucket_sources_bucket_idx ON page_view_bucket_sources (bucket);

-- The referrer's domain, lower case, `www.` folded; NULL for none, for a referrer that is not
-- a URL, and for the site's own pages (a visitor moving within the site came from nowhere new).
-- One expression, each argument used once: PostgreSQL inlines it into the calling query. (As a
-- SELECT with a FROM it was called as a function per row: +2 ms on a 200-view stats tail.)
CREATE FUNCTION tally_referrer_domain(referrer text, site text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(
        regexp_replace(lower(substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#:]+)')),
                       '^www\.', ''),
        regexp_replace(site, '^www\.', ''))
$$;

-- Views per site, UTC day and referring domain.
CREATE TABLE page_view_daily_referrers (
    site text NOT NULL,
    day date NOT NULL,
    domain text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, day, domain)
);
CREATE INDEX page_view_daily_referrers_day_idx ON page_view_daily_referrers (day);
CREATE TABLE page_view_bucket_referrers (
    site text NOT NULL,
    bucket timestamptz NOT NULL,
    domain text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (site, bucket, domain)
);
CREATE INDEX page_view_bucket_referrers_bucket_idx ON page_view_bucket_referrers (bucket);

-- Each visitor id's first and last bucket, while its salt's day may still bring views (a
-- few days: the rollup deletes older rows). A visitor id lives one day: the salt changes.
CREATE TABLE page_view_visitors (
    site text NOT NULL,
    visitor bigint NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    PRIMARY KEY (site, visitor)
);
CREATE INDEX page_view_visitors_last_bucket_idx ON page_view_visitors (last_bucket);

-- How many visitor ids were first seen in one bucket and last seen in another: a day (in
-- any zone) counts every id whose span meets it, without keeping one row per id for long.
CREATE TABLE page_view_visitor_spans (
    site text NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    visitors bigint NOT NULL,
    PRIMARY KEY (site, first_bucket, last_bucket)
);
CREATE INDEX page_view_visitor_spans_first_bucket_idx ON page_view_visitor_spans (first_bucket);

-- The same per path, for visitors per day and path (GET /api/export).
CREATE TABLE page_view_path_visitors (
    site text NOT NULL,
    path text NOT NULL,
    visitor bigint NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    PRIMARY KEY (site, path, visitor)
);
CREATE INDEX page_view_path_visitors_last_bucket_idx ON page_view_path_visitors (last_bucket);
CREATE TABLE page_view_path_visitor_spans (
    site text NOT NULL,
    path text NOT NULL,
    first_bucket timestamptz NOT NULL,
    last_bucket timestamptz NOT NULL,
    visitors bigint NOT NULL,
    PRIMARY KEY (site, path, first_bucket, last_bucket)
);
CREATE INDEX page_view_path_visitor_spans_first_bucket_idx ON page_view_path_visitor_spans (first_bucket);

-- The daily random salt of the visitor hash. The web creates the day's row on first use, the
-- clock's rotate_visitor_salts job the next day's ahead of time and deletes those two days old,
-- so no one can recompute an earlier day's visitor ids. 32 bytes from pg_strong_random.
CREATE TABLE visitor_salts (
    day date PRIMARY KEY,
    salt bytea NOT NULL DEFAULT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
);

-- Requests from crawlers, monitors and headless browsers: answered, counted here, never views.
CREATE TABLE crawler_hits_daily (
    site text NOT NULL,
    day date NOT NULL,
    hits bigint NOT NULL,
    PRIMARY KEY (site, day)
);

-- The rollup by snapshot of migrations/0004, now folding into the tables above.
CREATE OR REPLACE FUNCTION tally_rollup_page_views() RETURNS bigint LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    state page_view_rollup_state;
    snapshot pg_snapshot;
    folded bigint;
BEGIN
    -- Lock first, then take the snapshot: two rollups at once queue up here, and the
    -- second folds from the state the first one wrote.
    SELECT * INTO state FROM page_view_rollup_state FOR UPDATE;
    snapshot := pg_current_snapshot();

    -- What is new since the last rollup (see migrations/0004 for why this is exact).
    WITH fresh AS MATERIALIZED (
        SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket,
               path, referrer, source, visitor
          FROM page_views
         WHERE recorded_xid >= state.watermark AND pg_visible_in_snapshot(recorded_xid, snapshot)
        UNION ALL
        SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket,
               path, referrer, source, visitor
          FROM page_views
         WHERE recorded_xid = ANY (state.in_progress) AND pg_visible_in_snapshot(recorded_xid, snapshot)
    ), grouped AS MATERIALIZED (
        -- One pass over the fresh views; every count below adds up these groups (fewer rows
        -- than views), and a referrer's domain is parsed once per group, not once per view.
        SELECT site, bucket, path, source, tally_referrer_domain(referrer, site) AS domain, views
          FROM (SELECT site, bucket, path, source, referrer, count(*) AS views FROM fresh
                 GROUP BY 1, 2, 3, 4, 5) by_view
    ), buckets AS (
        INSERT INTO page_view_buckets (site, bucket, views)
        SELECT site, bucket, sum(views) FROM grouped GROUP BY 1, 2
        ON CONFLICT (site, bucket) DO UPDATE SET views = page_view_buckets.views + EXCLUDED.views
    ), bucket_paths AS MATERIALIZED (
        SELECT site, bucket, path, sum(views)::bigint AS views FROM grouped GROUP BY 1, 2, 3
    ), bucket_sources AS MATERIALIZED (
        SELECT site, bucket, source, sum(views)::bigint AS views FROM grouped
         WHERE source IS NOT NULL GROUP BY 1, 2, 3
    ), bucket_referrers AS MATERIALIZED (
        SELECT site, bucket, domain, sum(views)::bigint AS views FROM grouped
         WHERE domain IS NOT NULL GROUP BY 1, 2, 3
    ), paths AS (
        INSERT INTO page_view_bucket_paths (site, bucket, path, views)
        SELECT site, bucket, path, views FROM bucket_paths
        ON CONFLICT (site, bucket, path) DO UPDATE SET views = page_view_bucket_paths.views + EXCLUDED.views
    ), daily_paths AS (
        INSERT INTO page_view_daily_paths (site, day, path, views)
        SELECT site, (bucket AT TIME ZONE 'UTC')::date, path, sum(views) FROM bucket_paths GROUP BY 1, 2, 3
        ON CONFLICT (site, day, path) DO UPDATE SET views = page_view_daily_paths.views + EXCLUDED.views
    ), sources AS (
        INSERT INTO page_view_bucket_sources (site, bucket, source, views)
        SELECT site, bucket, source, views FROM bucket_sources
        ON CONFLICT (site, bucket, source) DO UPDATE SET views = page_view_bucket_sources.views + EXCLUDED.views
    ), daily_sources AS (
        INSERT INTO page_view_daily_sources (site, day, source, views)
        SELECT site, (bucket AT TIME ZONE 'UTC')::date, source, sum(views) FROM bucket_sources GROUP BY 1, 2, 3
        ON CONFLICT (site, day, source) DO UPDATE SET views = page_view_daily_sources.views + EXCLUDED.views
    ), referrers AS (
        INSERT INTO page_view_bucket_referrers (site, bucket, domain, views)
        SELECT site, bucket, domain, views FROM bucket_referrers
        ON CONFLICT (site, bucket, domain) DO UPDATE SET views = page_view_bucket_referrers.views + EXCLUDED.views
    ), daily_referrers AS (
        INSERT INTO page_view_daily_referrers (site, day, domain, views)
        SELECT site, (bucket AT TIME ZONE 'UTC')::date, domain, sum(views) FROM bucket_referrers GROUP BY 1, 2, 3
        ON CONFLICT (site, day, domain) DO UPDATE SET views = page_view_daily_referrers.views + EXCLUDED.views
    ), seen AS (
        -- Each visitor's span grows by its fresh views; its old span (if any) is replaced.
        SELECT fresh_ids.site, fresh_ids.visitor,
               least(fresh_ids.first_bucket, known.first_bucket) AS first_bucket,
               greatest(fresh_ids.last_bucket, known.last_bucket) AS last_bucket,
               known.first_bucket AS old_first, known.last_bucket AS old_last
          FROM (SELECT site, visitor, min(bucket) AS first_bucket, max(bucket) AS last_bucket
                  FROM fresh WHERE visitor IS NOT NULL GROUP BY 1, 2) fresh_ids
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
    ), path_seen AS (
        -- The same, per path.
        SELECT fresh_ids.site, fresh_ids.path, fresh_ids.visitor,
               least(fresh_ids.first_bucket, known.first_bucket) AS first_bucket,
               greatest(fresh_ids.last_bucket, known.last_bucket) AS last_bucket,
               known.first_bucket AS old_first, known.last_bucket AS old_last
          FROM (SELECT site, path, visitor, min(bucket) AS first_bucket, max(bucket) AS last_bucket
                  FROM fresh WHERE visitor IS NOT NULL GROUP BY 1, 2, 3) fresh_ids
          LEFT JOIN page_view_path_visitors known
            ON known.site = fresh_ids.site AND known.path = fresh_ids.path AND known.visitor = fresh_ids.visitor
    ), path_changed AS (
        SELECT * FROM path_seen
         WHERE old_first IS NULL OR first_bucket <> old_first OR last_bucket <> old_last
    ), path_visitors AS (
        INSERT INTO page_view_path_visitors (site, path, visitor, first_bucket, last_bucket)
        SELECT site, path, visitor, first_bucket, last_bucket FROM path_changed
        ON CONFLICT (site, path, visitor) DO UPDATE
           SET first_bucket = EXCLUDED.first_bucket, last_bucket = EXCLUDED.last_bucket
    ), path_spans AS (
        INSERT INTO page_view_path_visitor_spans (site, path, first_bucket, last_bucket, visitors)
        SELECT site, path, first_bucket, last_bucket, sum(delta)
          FROM (SELECT site, path, first_bucket, last_bucket, 1 AS delta FROM path_changed
                UNION ALL
                SELECT site, path, old_first, old_last, -1 FROM path_changed WHERE old_first IS NOT NULL) moves
         GROUP BY 1, 2, 3, 4 HAVING sum(delta) <> 0
        ON CONFLICT (site, path, first_bucket, last_bucket) DO UPDATE
           SET visitors = page_view_path_visitor_spans.visitors + EXCLUDED.visitors
    )
    SELECT count(*) INTO folded FROM fresh;

    -- Visitor ids whose salt is long gone bring no more views: their rows can go. Under the
    -- state lock, so no rollup reads a row while it is deleted.
    DELETE FROM page_view_visitors WHERE last_bucket < now() - interval '3 days';
    DELETE FROM page_view_path_visitors WHERE last_bucket < now() - interval '3 days';

    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded;
    RETURN folded;
END
$$;
