-- page_views in daily partitions (issue 19): `page_views_pYYYYMMDD` holds one UTC day, a default
-- partition takes any view no day holds yet (a late beacon, a backfill, a clock far off), and
-- retention drops whole days (jobs/page_views.py) instead of deleting rows.
--
-- This file runs in steps, each its own transaction with a short lock_timeout, retried
-- (migrations/__init__.py): the release step converts a live table while web and worker
-- go on. Every step can run again after an interrupted release. The existing table is not
-- copied: it becomes one partition, `page_views_legacy`, for every time before the bound
-- (the next UTC midnight), and retention drops it once its last day is past RETENTION_DAYS.
-- Attaching it reads none of its rows because a validated CHECK proves the bound
-- (step 4), so the one lock that stops ingest (step 5) lasts as long as catalog changes do.

-- step: remember the bound and hold aside views dated past it
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    CREATE TABLE IF NOT EXISTS tally_page_views_conversion (
        bound timestamptz NOT NULL
    );
    INSERT INTO tally_page_views_conversion (bound)
    SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day'
     WHERE NOT EXISTS (SELECT FROM tally_page_views_conversion);
    -- Views dated at or past the bound wait here until the partitioned table exists.
    -- `rolled_up` says whether the rollup has folded the view already: if not, it goes in
    -- again with a fresh transaction id, so the rollup folds it exactly once.
    CREATE TABLE IF NOT EXISTS page_views_held (LIKE page_views INCLUDING DEFAULTS);
    ALTER TABLE page_views_held ADD COLUMN IF NOT EXISTS rolled_up boolean NOT NULL DEFAULT false;
    CREATE OR REPLACE FUNCTION tally_hold_view_past_bound() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF NEW.viewed_at >= (SELECT bound FROM tally_page_views_conversion) THEN
            INSERT INTO page_views_held SELECT NEW.*;
            RETURN NULL;
        END IF;
        RETURN NEW;
    END
    $fn$;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'page_views_hold_past_bound'
                                           AND tgrelid = 'page_views'::regclass) THEN
        CREATE TRIGGER page_views_hold_past_bound BEFORE INSERT ON page_views
            FOR EACH ROW EXECUTE FUNCTION tally_hold_view_past_bound();
    END IF;
END
$$;

-- step: move the views already stored past the bound aside, once the rollup holds them
DO $$
DECLARE
    state page_view_rollup_state;
    waiting bigint;
    bound timestamptz;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    SELECT c.bound INTO bound FROM tally_page_views_conversion c;  -- a value the plan sees: the index
    IF NOT EXISTS (SELECT FROM page_views WHERE viewed_at >= bound) THEN
        RETURN;
    END IF;
    -- Fold what is committed, then hold the rollup still while the folded views move.
    PERFORM tally_rollup_page_views();
    SELECT * INTO state FROM page_view_rollup_state FOR UPDATE;
    WITH moved AS (
        DELETE FROM page_views
         WHERE viewed_at >= bound
           AND recorded_xid < state.watermark AND NOT recorded_xid = ANY (state.in_progress)
        RETURNING *
    )
    INSERT INTO page_views_held SELECT moved.*, true FROM moved;
    SELECT count(*) INTO waiting FROM page_views WHERE viewed_at >= bound;
    IF waiting > 0 THEN
        RAISE EXCEPTION '% views dated past the bound are not rolled up yet', waiting
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'the step is retried';
    END IF;
END
$$;

-- step: bound the existing table (checked for new rows from now on)
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'page_views_before_partitions'
                                              AND conrelid = 'page_views'::regclass) THEN
        EXECUTE format('ALTER TABLE page_views ADD CONSTRAINT page_views_before_partitions'
                       ' CHECK (viewed_at < %L) NOT VALID', (SELECT bound FROM tally_page_views_conversion));
    END IF;
END
$$;

-- step: validate the bound (reads every row; inserts go on meanwhile)
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) = 'r' THEN
        ALTER TABLE page_views VALIDATE CONSTRAINT page_views_before_partitions;
    END IF;
END
$$;

-- step: the tail's days, marked as views arrive
-- The stats tail (views the rollup has not folded) is found by transaction id, which says
-- nothing of the day: read as such it plans a scan of every partition on every stats request
-- (3.5 ms a query with 48 partitions, 190 ms a request with 387). So each INSERT statement
-- marks the UTC days and transaction ids of its views in page_view_tail_days, in the same
-- transaction (visible exactly when they are); stats read the span of the unfolded marks and
-- give it as bounds on viewed_at, which PostgreSQL prunes to at planning. Each rollup
-- deletes the marks it folded. A view inserted into a partition directly (not through
-- page_views) leaves no mark: it reaches stats at the next rollup. The existing table gets the
-- trigger now and its unfolded views their marks (no lock that stops ingest), so the switch
-- finds the tail marked.
CREATE TABLE IF NOT EXISTS page_view_tail_days (
    xid xid8 NOT NULL,
    day date NOT NULL,
    PRIMARY KEY (xid, day)
);
CREATE OR REPLACE FUNCTION tally_mark_tail_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO page_view_tail_days (xid, day)
    SELECT DISTINCT recorded_xid, (viewed_at AT TIME ZONE 'UTC')::date FROM inserted
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
-- A rollup records its snapshot in page_view_rollup_state: the marks of what it folded go in
-- the same transaction.
CREATE OR REPLACE FUNCTION tally_forget_folded_tail_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM page_view_tail_days WHERE xid < NEW.watermark AND NOT xid = ANY (NEW.in_progress);
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER page_view_rollup_state_forgets_tail_days AFTER UPDATE ON page_view_rollup_state
    FOR EACH ROW EXECUTE FUNCTION tally_forget_folded_tail_days();
DO $$
BEGIN
    -- Made when no transaction that inserted views is open (the lock waits for them), so every
    -- view without a mark is committed, and the next step sees it.
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) = 'r' THEN
        CREATE OR REPLACE TRIGGER page_views_mark_tail_days AFTER INSERT ON page_views
            REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tally_mark_tail_days();
    END IF;
END
$$;

-- step: mark the days of the views not yet rolled up (a read of the tail; inserts go on)
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    INSERT INTO page_view_tail_days (xid, day)
    SELECT DISTINCT v.recorded_xid, (v.viewed_at AT TIME ZONE 'UTC')::date
      FROM page_views v, page_view_rollup_state s
     WHERE v.recorded_xid >= s.watermark OR v.recorded_xid = ANY (s.in_progress)
    ON CONFLICT DO NOTHING;
END
$$;

-- step: switch to the partitioned table (catalog changes only, under the one exclusive lock)
DO $$
DECLARE
    bound timestamptz;
    next_id bigint;
    day date;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'page_views'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    LOCK TABLE page_views IN ACCESS EXCLUSIVE MODE;
    SELECT c.bound INTO bound FROM tally_page_views_conversion c;
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM %s',
                   pg_get_serial_sequence('page_views', 'id')) INTO next_id;

    -- The row type changes with the table: the function returning it goes and comes back below.
    DROP FUNCTION tally_views_matching(timestamptz, timestamptz, text, text, text[], text, text, text, text,
                                       text, text, text, text, text);
    ALTER TABLE page_views RENAME TO page_views_legacy;
    DROP TRIGGER page_views_hold_past_bound ON page_views_legacy;
    DROP TRIGGER page_views_mark_tail_days ON page_views_legacy;  -- the parent's marks from now on
    ALTER INDEX page_views_pkey RENAME TO page_views_legacy_pkey;
    ALTER INDEX page_views_viewed_at_idx RENAME TO page_views_legacy_viewed_at_idx;
    ALTER INDEX page_views_recorded_xid_idx RENAME TO page_views_legacy_recorded_xid_idx;
    ALTER INDEX page_views_visitor_viewed_at_idx RENAME TO page_views_legacy_visitor_viewed_at_idx;
    ALTER INDEX page_views_visitor_idx RENAME TO page_views_legacy_visitor_idx;

    CREATE TABLE page_views (
        LIKE page_views_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING COMMENTS
    ) PARTITION BY RANGE (viewed_at);
    ALTER TABLE page_views DROP CONSTRAINT page_views_before_partitions;
    EXECUTE format('ALTER TABLE page_views ALTER COLUMN id RESTART WITH %s', next_id);
    ALTER TABLE page_views_legacy ALTER COLUMN id DROP IDENTITY;  -- a partition may not have its own
    -- On the parent while it has no partitions: instant. Attaching matches the legacy table's
    -- indexes of the same definition instead of building new ones.
    CREATE INDEX page_views_viewed_at_idx ON page_views (viewed_at);
    CREATE INDEX page_views_recorded_xid_idx ON page_views (recorded_xid);
    CREATE INDEX page_views_visitor_viewed_at_idx ON page_views (viewed_at) WHERE visitor IS NOT NULL;
    CREATE INDEX page_views_visitor_idx ON page_views (site, visitor, viewed_at) WHERE visitor IS NOT NULL;

    IF EXISTS (SELECT FROM page_views_legacy) THEN
        EXECUTE format('ALTER TABLE page_views ATTACH PARTITION page_views_legacy'
                       ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
        ALTER TABLE page_views_legacy DROP CONSTRAINT page_views_before_partitions;
    ELSE
        DROP TABLE page_views_legacy;  -- a new database: days only
        bound := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    END IF;
    FOR day IN SELECT generate_series((bound AT TIME ZONE 'UTC')::date,
                                      (now() AT TIME ZONE 'UTC')::date + 7, interval '1 day')::date LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF page_views FOR VALUES FROM (%L) TO (%L)',
                       'page_views_p' || to_char(day, 'YYYYMMDD'),
                       day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
    CREATE TABLE page_views_default PARTITION OF page_views DEFAULT;

    CREATE TRIGGER page_views_mark_tail_days AFTER INSERT ON page_views
        REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tally_mark_tail_days();

    -- Views the rollup folded keep their transaction id; the others get this one's.
    INSERT INTO page_views (id, path, referrer, viewed_at, recorded_xid, site, source, visitor, medium,
                            campaign, country, browser, os, device)
    OVERRIDING SYSTEM VALUE
    SELECT id, path, referrer, viewed_at, CASE WHEN rolled_up THEN recorded_xid ELSE pg_current_xact_id() END,
           site, source, visitor, medium, campaign, country, browser, os, device
      FROM page_views_held;
    DROP TABLE page_views_held;
    DROP FUNCTION tally_hold_view_past_bound();
    DROP TABLE tally_page_views_conversion;
END
$$;

-- step: what the stats read and the jobs run on the partitioned table

-- As in migrations/0018, on the new row type.
CREATE OR REPLACE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    of_path text, referrers text[], of_source text, of_medium text, of_campaign text,
    of_country text, of_browser text, of_os text, of_device text,
    of_event text, of_goal_path text
) RETURNS SETOF page_views
LANGUAGE sql STABLE AS $$
    SELECT * FROM page_views v
     WHERE v.viewed_at >= start AND v.viewed_at < stop
       AND (of_site IS NULL OR v.site = of_site)
       AND (of_path IS NULL OR v.path = of_path)
       AND (referrers IS NULL OR tally_referrer_domain(v.referrer, v.site) = ANY (referrers))
       AND (of_source IS NULL OR v.source = of_source)
       AND (of_medium IS NULL OR v.medium = of_medium)
       AND (of_campaign IS NULL OR v.campaign = of_campaign)
       AND (of_country IS NULL OR v.country = of_country)
       AND (of_browser IS NULL OR v.browser = of_browser)
       AND (of_os IS NULL OR v.os = of_os)
       AND (of_device IS NULL OR v.device = of_device)
       AND (of_event IS NULL OR (v.site, v.visitor) IN (
               SELECT e.site, e.visitor FROM events e
                WHERE e.name = of_event AND e.occurred_at >= start AND e.occurred_at < stop))
       AND (of_goal_path IS NULL OR (v.site, v.visitor) IN (
               SELECT g.site, g.visitor FROM page_views g
                WHERE g.path = of_goal_path AND g.viewed_at >= start AND g.viewed_at < stop))
$$;

-- The partitions of page_views with their ranges (NULL bounds: the default one; -infinity:
-- MINVALUE). What maintain_partitions and cleanup read, and a view for a person in psql.
CREATE OR REPLACE VIEW tally_page_view_partitions AS
SELECT c.relname AS name,
       c.oid::regclass AS partition,
       CASE WHEN b.expr LIKE '%MINVALUE%' THEN '-infinity'::timestamptz
            ELSE substring(b.expr FROM 'FROM \(''([^'']+)''\)')::timestamptz END AS starts,
       substring(b.expr FROM 'TO \(''([^'']+)''\)')::timestamptz AS ends,
       b.expr = 'DEFAULT' AS is_default
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
 CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
 WHERE i.inhparent = 'page_views'::regclass;

-- The day partition of `day` (UTC), made if missing; NULL when another partition covers the
-- day (the legacy one). Views of that day waiting in the default partition move into it in
-- the same transaction, with their transaction ids, so the rollup neither misses nor refolds
-- them. A lock that live traffic holds is waited for 100 ms at most (ingest queues behind the
-- wait); the caller tries again.
CREATE OR REPLACE FUNCTION tally_ensure_day_partition(day date) RETURNS text LANGUAGE plpgsql
SET lock_timeout = '100ms'
AS $$
DECLARE
    name text := 'page_views_p' || to_char(day, 'YYYYMMDD');
    day_starts timestamptz := day::timestamp AT TIME ZONE 'UTC';
    day_ends timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    IF EXISTS (SELECT FROM tally_page_view_partitions p WHERE p.starts < day_ends AND p.ends > day_starts) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT FROM page_views_default WHERE viewed_at >= day_starts AND viewed_at < day_ends) THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF page_views FOR VALUES FROM (%L) TO (%L)', name, day_starts, day_ends);
        RETURN name;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE page_views INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('WITH moved AS (DELETE FROM page_views_default WHERE viewed_at >= $1 AND viewed_at < $2'
                   ' RETURNING *) INSERT INTO %I SELECT * FROM moved', name) USING day_starts, day_ends;
    EXECUTE format('ALTER TABLE page_views ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, day_starts, day_ends);
    RETURN name;
END
$$;

-- Detach the partitions `parts` (wholly before the retention cutoff) whose views the rollup
-- holds all of; return how many views went, as the statistics count them (exact for a partition
-- only ever inserted into; a count where they hold none), and which partitions. A partition with
-- a view not yet folded stays (the next cleanup finds it folded). Each partition is locked
-- against inserts first, so none arrives unseen between the check and the detach; only then are
-- they detached, together: page_views is locked exclusively for a few catalog changes and a
-- commit that writes no file. tally_drop_detached_days() then removes their files, holding no
-- lock on page_views. Locks are waited for 100 ms at most; the caller retries.
CREATE OR REPLACE FUNCTION tally_detach_rolled_up_partitions(parts regclass[], watermark xid8, in_progress xid8[])
RETURNS TABLE (views bigint, detached text[]) LANGUAGE plpgsql
SET lock_timeout = '100ms'
AS $$
DECLARE
    part regclass;
    waiting boolean;
    counted bigint;
BEGIN
    views := 0;
    detached := '{}';
    FOREACH part IN ARRAY parts LOOP
        EXECUTE format('LOCK TABLE %s IN SHARE MODE', part);
        EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE recorded_xid >= $1 OR recorded_xid = ANY ($2))', part)
           INTO waiting USING watermark, in_progress;
        CONTINUE WHEN waiting;
        counted := pg_stat_get_live_tuples(part);
        IF counted = 0 THEN  -- an empty day, or statistics lost in a crash
            EXECUTE format('SELECT count(*) FROM %s', part) INTO counted;
        END IF;
        views := views + counted;
        detached := detached || part::text;
    END LOOP;
    FOREACH part IN ARRAY detached::regclass[] LOOP
        EXECUTE format('ALTER TABLE page_views DETACH PARTITION %s', part);
    END LOOP;
    RETURN NEXT;
END
$$;

-- Tables of days that retention detached (`page_views_pYYYYMMDD`, no longer a partition), dropped:
-- their files go at this commit, with no lock on page_views. A cleanup interrupted between the
-- two leaves them for the next one. Returns their names.
CREATE OR REPLACE FUNCTION tally_drop_detached_days() RETURNS text[] LANGUAGE plpgsql
SET lock_timeout = '100ms'
AS $$
DECLARE
    day_table regclass;
    dropped text[] := '{}';
BEGIN
    FOR day_table IN SELECT c.oid::regclass FROM pg_class c
                      WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND NOT c.relispartition
                        AND c.relname ~ '^page_views_(p[0-9]{8}|legacy)$' ORDER BY c.relname LOOP
        dropped := dropped || day_table::text;  -- named before it goes
        EXECUTE format('DROP TABLE %s', day_table);
    END LOOP;
    RETURN dropped;
END
$$;

-- Up to batch_size of the oldest rolled-up views before `cutoff` deleted from the partitions that
-- are not days (the default one, the legacy one before its last day expires). A day's views stay
-- until the whole day is past the cutoff: at most a day longer than RETENTION_DAYS.
CREATE OR REPLACE FUNCTION tally_delete_expired_views_batch(
    cutoff timestamptz, watermark xid8, in_progress xid8[], batch_size integer
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    part regclass;
    removed bigint;
    total bigint := 0;
BEGIN
    FOR part IN SELECT p.partition FROM tally_page_view_partitions p
                 WHERE (p.is_default OR p.starts < cutoff) AND p.name !~ '^page_views_p[0-9]{8}$'
                 ORDER BY p.starts NULLS LAST LOOP
        EXIT WHEN total >= batch_size;
        -- ctid = ANY: a TID scan of the rows the index found, within one partition.
        EXECUTE format('WITH deleted AS (DELETE FROM %1$s WHERE ctid = ANY (ARRAY('
                       ' SELECT ctid FROM %1$s WHERE viewed_at < $1'
                       '    AND recorded_xid < $2 AND NOT recorded_xid = ANY ($3)'
                       '  ORDER BY viewed_at LIMIT $4)) RETURNING 1) SELECT count(*) FROM deleted', part)
           INTO removed USING cutoff, watermark, in_progress, batch_size - total;
        total := total + removed;
    END LOOP;
    RETURN total;
END
$$;
