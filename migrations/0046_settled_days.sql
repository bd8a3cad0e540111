-- Days of the rollups that no rollup has changed since: a window's values over them are read
-- once, not after every rollup (tally/web/rolled_up.py, `read_rolled_up`).
--
-- A window's values were read again whole after each rollup: a month of
-- page_view_day_values, 3-5 s on a site whose paths carry ids, though a minutely rollup
-- writes only the rows of today and yesterday (the ids' moves reach one UTC day back) but
-- for late views and backfills. The rollup now says which rows it left alone: those of the
-- UTC days before `settled_before` (yesterday, as the rollup's clock has it), unchanged since
-- the transaction `settled_by`. A web keeps a window's values over those days for as long as
-- both stay as they are.
--
-- Who moves `settled_by`: the rollup (dimension_functions.sql), when a row it writes is of a
-- day before its `settled_before`; and any DELETE or TRUNCATE of page_view_day_values (the
-- triggers below: the rollups' retention, a rebuild's unfolding, an operator's hand). Anything
-- else that changes these rows must move it too (a migration that rewrites them, say).
ALTER TABLE page_view_rollup_state
    ADD COLUMN settled_before date,
    ADD COLUMN settled_by xid8;

COMMENT ON COLUMN page_view_rollup_state.settled_before IS
    'page_view_day_values rows of UTC days before this one are unchanged since settled_by (NULL: none is known to be)';
COMMENT ON COLUMN page_view_rollup_state.settled_by IS
    'The last transaction that changed a page_view_day_values row of a day before settled_before';

CREATE FUNCTION tally_unsettle_deleted_days() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM gone g, page_view_rollup_state s WHERE g.day < s.settled_before) THEN
        UPDATE page_view_rollup_state SET settled_by = pg_current_xact_id();
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tally_unsettle_every_day() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE page_view_rollup_state SET settled_by = pg_current_xact_id();
    RETURN NULL;
END
$$;

CREATE TRIGGER tally_unsettle_deleted_days AFTER DELETE ON page_view_day_values
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION tally_unsettle_deleted_days();
CREATE TRIGGER tally_unsettle_every_day AFTER TRUNCATE ON page_view_day_values
    FOR EACH STATEMENT EXECUTE FUNCTION tally_unsettle_every_day();
