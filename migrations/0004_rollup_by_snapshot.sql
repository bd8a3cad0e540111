-- The rollup remembers the snapshot it folded at, not only its oldest transaction.
--
-- Until now the watermark was pg_snapshot_xmin: the oldest transaction running anywhere
-- in the cluster. One transaction left open (a forgotten BEGIN in psql, a long data
-- migration, another app's database on the same server) stopped the rollup, so the
-- stats tail and the views cleanup may not delete grew without bound.
--
-- Now a rollup folds every view whose transaction had finished when it ran, and records
-- that snapshot: `watermark` is its xmax and `in_progress` the transactions still running
-- below it. A view is in the rollups exactly when its recorded_xid is below the watermark
-- and not in progress; every other committed view is in the stats tail. A transaction
-- that commits late is in progress at one rollup and folded by the next: counted once.
ALTER TABLE page_view_rollup_state
    ADD COLUMN in_progress xid8[] NOT NULL DEFAULT '{}',
    -- The views folded by the last rollup, for the rollup lag shown in health and metrics.
    ADD COLUMN last_folded bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN page_view_rollup_state.watermark IS
    'xmax of the snapshot the last rollup folded at: views below it, unless in_progress, are rolled up';
COMMENT ON COLUMN page_view_rollup_state.in_progress IS
    'transactions running (so not yet folded) when the last rollup took its snapshot';

-- The rollup reads the state row by itself on every call: give the planner real figures.
ANALYZE page_view_rollup_state;

-- Its own planner settings, whoever calls it (the worker, psql, a pooled connection): its
-- queries are planned with the real watermark every time, never with a generic guess
-- that could pick a scan of the whole table, and never pay for JIT compilation.
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

    -- What is new since the last rollup: the views of transactions at or above its
    -- watermark or then in progress, that had finished by this snapshot. Each statement
    -- here sees at least what the snapshot saw (a later snapshot sees every transaction an
    -- earlier one saw as finished), and pg_visible_in_snapshot drops the rest; views of
    -- aborted transactions are invisible to every statement.
    WITH fresh AS MATERIALIZED (
        SELECT viewed_at, path FROM page_views
         WHERE recorded_xid >= state.watermark AND pg_visible_in_snapshot(recorded_xid, snapshot)
        UNION ALL
        SELECT viewed_at, path FROM page_views
         WHERE recorded_xid = ANY (state.in_progress) AND pg_visible_in_snapshot(recorded_xid, snapshot)
    ), hourly AS (
        INSERT INTO page_view_hourly (hour, views)
        SELECT date_trunc('hour', viewed_at, 'UTC'), count(*) FROM fresh GROUP BY 1
        ON CONFLICT (hour) DO UPDATE SET views = page_view_hourly.views + EXCLUDED.views
    ), paths AS (
        INSERT INTO page_view_daily_paths (day, path, views)
        SELECT (viewed_at AT TIME ZONE 'UTC')::date, path, count(*) FROM fresh GROUP BY 1, 2
        ON CONFLICT (day, path) DO UPDATE SET views = page_view_daily_paths.views + EXCLUDED.views
    )
    SELECT count(*) INTO folded FROM fresh;

    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded;
    RETURN folded;
END
$$;
