-- One row per recorded page view (the contract in DESIGN.md).
-- recorded_xid is the inserting transaction's id: the rollup job folds rows in by
-- transaction id, below the oldest transaction still running, so a view whose
-- insert commits late is never skipped nor counted twice.
CREATE TABLE page_views (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path text NOT NULL CHECK (path LIKE '/%' AND length(path) <= 2048),
    referrer text CHECK (length(referrer) <= 2048),
    viewed_at timestamptz NOT NULL DEFAULT now(),
    recorded_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);

-- cleanup_old_page_views walks the oldest rows first, a bounded batch at a time.
CREATE INDEX page_views_viewed_at_idx ON page_views (viewed_at);
-- The rollup and the stats tail read the rows above the rollup watermark.
CREATE INDEX page_views_recorded_xid_idx ON page_views (recorded_xid);
