-- Rollups that keep GET /api/stats fast and exact however large page_views grows.
--
-- rollup_page_views folds every view whose recorded_xid is below the watermark into
-- these tables, in the same transaction that moves the watermark. The watermark is
-- the oldest transaction still running when the rollup ran, so a view that commits
-- late is still above it: stats read rollups + the views at or above the watermark
-- (the tail), in one snapshot, and count every view exactly once.
CREATE TABLE page_view_rollup_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    watermark xid8 NOT NULL,
    rolled_up_at timestamptz
);
INSERT INTO page_view_rollup_state (watermark) VALUES ('0'::xid8);

-- Views per UTC hour: daily totals and the last 24 hours.
CREATE TABLE page_view_hourly (
    hour timestamptz PRIMARY KEY,
    views bigint NOT NULL
);

-- Views per UTC day and path: top paths over any window. Outlives raw retention.
CREATE TABLE page_view_daily_paths (
    day date NOT NULL,
    path text NOT NULL,
    views bigint NOT NULL,
    PRIMARY KEY (day, path)
);

-- Why a job failed: procrastinate keeps the status, the worker records the error.
CREATE TABLE tally_job_errors (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES procrastinate_jobs ON DELETE CASCADE,
    attempt integer NOT NULL,
    error text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tally_job_errors_job_id_idx ON tally_job_errors (job_id);
CREATE INDEX tally_job_errors_failed_at_idx ON tally_job_errors (failed_at);

-- One rollup step. A function, because each statement in it takes a fresh snapshot:
-- the watermark is locked first, then the upper bound is read, so two rollups at once
-- queue up instead of folding the same views twice.
CREATE FUNCTION tally_rollup_page_views() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    low xid8;
    high xid8;
    folded bigint;
BEGIN
    SELECT watermark INTO low FROM page_view_rollup_state FOR UPDATE;
    -- Every transaction below the snapshot's xmin has committed or aborted.
    high := pg_snapshot_xmin(pg_current_snapshot());
    IF high <= low THEN
        RETURN 0;
    END IF;

    WITH fresh AS (
        SELECT date_trunc('hour', viewed_at, 'UTC') AS hour, count(*) AS views
          FROM page_views
         WHERE recorded_xid >= low AND recorded_xid < high
         GROUP BY 1
    ), folded_in AS (
        INSERT INTO page_view_hourly (hour, views) SELECT hour, views FROM fresh
        ON CONFLICT (hour) DO UPDATE SET views = page_view_hourly.views + EXCLUDED.views
    )
    SELECT coalesce(sum(views), 0) INTO folded FROM fresh;

    INSERT INTO page_view_daily_paths (day, path, views)
    SELECT (viewed_at AT TIME ZONE 'UTC')::date, path, count(*)
      FROM page_views
     WHERE recorded_xid >= low AND recorded_xid < high
     GROUP BY 1, 2
    ON CONFLICT (day, path) DO UPDATE SET views = page_view_daily_paths.views + EXCLUDED.views;

    UPDATE page_view_rollup_state SET watermark = high, rolled_up_at = now();
    RETURN folded;
END
$$;
