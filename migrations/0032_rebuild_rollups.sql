-- Rebuilding the rollups of the UTC days since a date from the raw views (jobs/rebuild.py, task
-- `rebuild_rollups`). The rollups are folded once per view, by transaction id
-- (migrations/0004): views an operator deletes (a backfill run twice, a wrong import) stay
-- counted. This unfolds those days inside the caller's transaction, which then runs the
-- rollup unchanged (tally_rollup_page_views) and commits: readers see the old rollups or the
-- new ones, never the days missing.
--
-- Under the rollup state's row (as the rollup and the partition moves take it): it deletes every
-- rollup row of the days (a day row's `pairs` are pairs with the day before, and go with it),
-- gives the days' views and events this transaction's id, so the rollup takes them as not
-- folded (tally_visitor_moves and tally_visit_moves then find nothing folded of those days, and
-- form firsts, lasts, pairs and visits from all their views), and marks the days as the tail's
-- (page_view_tail_days), so that should they stay unfolded readers still find them.
-- crawler_hits_daily has no raw rows to rebuild from and is kept.
--
-- `since` NULL: the oldest day that can be rebuilt. It refuses a day after today, and one whose
-- views, or the day before's, the cleanup may have cut into (tally_oldest_rebuild_day): rolling
-- up a day partly deleted would undercount it. Checked again once the views are updated: from then on this
-- transaction holds their row locks (a batch delete of the default partition waits for them)
-- and a lock on their partitions (a detach waits), so a cleanup that passed midnight between
-- the first check and the update is caught here, not rolled into the days.
CREATE FUNCTION tally_unfold_days(since date, retention_days integer)
RETURNS TABLE (rebuilt_since date, views_unfolded bigint, events_unfolded bigint, days_marked bigint, unfolded_by xid8)
LANGUAGE plpgsql AS $$
DECLARE
    day_starts timestamptz;
BEGIN
    rebuilt_since := coalesce(since, tally_oldest_rebuild_day(retention_days));
    day_starts := rebuilt_since::timestamp AT TIME ZONE 'UTC';
    PERFORM tally_check_rebuild_since(rebuilt_since, retention_days);
    PERFORM 1 FROM page_view_rollup_state FOR UPDATE;
    -- Taken under the state's row: every rollup before committed without this id, and it is
    -- either in no snapshot a rollup recorded, or past its watermark.
    unfolded_by := pg_current_xact_id();

    DELETE FROM page_view_buckets WHERE bucket >= day_starts;
    DELETE FROM page_view_day_values WHERE day >= rebuilt_since;
    DELETE FROM page_view_visit_buckets WHERE bucket >= day_starts;
    DELETE FROM page_view_visit_days WHERE day >= rebuilt_since;

    -- Old rows only: row locks, which no insert waits on (page_views has no unique index).
    WITH unfolded AS (
        UPDATE page_views SET recorded_xid = unfolded_by
         WHERE viewed_at >= day_starts
        RETURNING (viewed_at AT TIME ZONE 'UTC')::date AS day
    ), marked AS (
        INSERT INTO page_view_tail_days (xid, day)
        SELECT DISTINCT unfolded_by, unfolded.day FROM unfolded
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM unfolded), (SELECT count(*) FROM marked) INTO views_unfolded, days_marked;
    UPDATE events SET recorded_xid = unfolded_by WHERE occurred_at >= day_starts;
    GET DIAGNOSTICS events_unfolded = ROW_COUNT;

    PERFORM tally_check_rebuild_since(rebuilt_since, retention_days);
    RETURN NEXT;
END
$$;

-- The oldest UTC day whose rollups can be rebuilt by the database's clock now: the cleanup cuts
-- views before now - retention_days, so the first day it keeps whole is the day after that, and
-- a day's row holds its pairs with the day before (ids seen on both: tally_visitor_moves reads
-- the day before's last buckets from the raw views), which must be whole too.
CREATE FUNCTION tally_oldest_rebuild_day(retention_days integer) RETURNS date
LANGUAGE sql VOLATILE AS $$
    SELECT (clock_timestamp() AT TIME ZONE 'UTC')::date - retention_days + 2
$$;

-- Raises (invalid_parameter_value) unless the rollups of `since` can be rebuilt now.
CREATE FUNCTION tally_check_rebuild_since(since date, retention_days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    today date := (clock_timestamp() AT TIME ZONE 'UTC')::date;
    oldest date := tally_oldest_rebuild_day(retention_days);
BEGIN
    IF since > today THEN
        RAISE EXCEPTION 'since % is after today (% UTC): there is nothing to rebuild', since, today
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF since < oldest THEN
        RAISE EXCEPTION 'since % is before %, the oldest UTC day that can be rebuilt (RETENTION_DAYS=%): '
                        'the cleanup has cut into the day before it, and a day''s rollups need its raw views '
                        'and those of the day before whole, else they lose the views deleted',
                        since, oldest, retention_days
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
