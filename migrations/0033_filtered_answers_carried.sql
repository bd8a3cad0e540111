-- Filtered answers carried forward (tally/web/carried.py, docs/ARCHITECTURE.md "Filters read
-- the raw views"). The web keeps a filtered answer with the snapshot it was counted in; the next
-- request for it counts again only the visitors with views or events recorded since, and takes
-- off what they counted then. Two things make that exact:
--
-- 1. tally_views_matching reads a few visitors' views (by id, through the index of a visitor's
--    views), and with `as_of` only the views and goals an earlier snapshot saw. A new form beside
--    the one of 0022, which the release before this one calls until its web is replaced.
-- 2. A kept answer counts rows that may since have gone or changed: retention dropping a day, a
--    rebuild marking views to fold again, an operator's DELETE. tally_raw_changes counts such
--    statements, in their own transaction, and a kept answer is used only with the count it was
--    made with. Statements on page_views itself and on events bump it by trigger (when they touch
--    a row); cleanup's detach of expired days (below) and its delete from a partition by name
--    (tally/queries.sql, which fires no trigger of page_views) bump it in their own transaction.
--    Moving views out of the default partition keeps every column, recorded_xid too, so it
--    changes no answer and bumps nothing.
CREATE TABLE tally_raw_changes (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    changes bigint NOT NULL DEFAULT 0
);
INSERT INTO tally_raw_changes DEFAULT VALUES;

CREATE FUNCTION tally_count_raw_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM changed) THEN
        UPDATE tally_raw_changes SET changes = changes + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tally_count_raw_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tally_raw_changes SET changes = changes + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER page_views_deleted AFTER DELETE ON page_views
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tally_count_raw_change();
CREATE TRIGGER page_views_updated AFTER UPDATE ON page_views
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tally_count_raw_change();
CREATE TRIGGER page_views_truncated AFTER TRUNCATE ON page_views
    FOR EACH STATEMENT EXECUTE FUNCTION tally_count_raw_truncate();
CREATE TRIGGER events_deleted AFTER DELETE ON events
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tally_count_raw_change();
CREATE TRIGGER events_updated AFTER UPDATE ON events
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tally_count_raw_change();
CREATE TRIGGER events_truncated AFTER TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tally_count_raw_truncate();

CREATE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    of_path text, referrers text[], of_source text, of_medium text, of_campaign text, of_country text, of_browser text, of_os text, of_device text,
    of_event text, of_goal_path text, goals_from timestamptz, goals_until timestamptz,
    of_sites text[], of_visitors bigint[], as_of pg_snapshot, anonymous_from xid8, anonymous_running xid8[]
) RETURNS SETOF page_views
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT v.* FROM (
        SELECT * FROM page_views WHERE of_visitors IS NULL AND anonymous_from IS NULL
        UNION ALL
        SELECT p.* FROM unnest(of_sites, of_visitors) AS i (site, visitor)
          JOIN page_views p ON p.site = i.site AND p.visitor = i.visitor
        UNION ALL
        SELECT * FROM page_views
         WHERE anonymous_from IS NOT NULL AND visitor IS NULL  -- through the index on recorded_xid
           AND (recorded_xid >= anonymous_from OR recorded_xid = ANY (anonymous_running))
    ) v
      LEFT JOIN (SELECT DISTINCT e.site, e.visitor
                   FROM (SELECT * FROM events WHERE of_visitors IS NULL
                         UNION ALL  -- a few ids: their events through the index of a sender's
                         SELECT e.* FROM unnest(of_sites, of_visitors) AS i (site, visitor)
                           JOIN events e ON e.site = i.site AND e.visitor = i.visitor) e
                  WHERE of_event IS NOT NULL AND e.name = of_event
                    AND e.occurred_at >= goals_from AND e.occurred_at < goals_until
                    AND (as_of IS NULL OR pg_visible_in_snapshot(e.recorded_xid, as_of))) converted
             ON converted.site = v.site AND converted.visitor = v.visitor
      LEFT JOIN (SELECT DISTINCT g.site, g.visitor
                   FROM (SELECT * FROM page_views WHERE of_visitors IS NULL
                         UNION ALL
                         SELECT g.* FROM unnest(of_sites, of_visitors) AS i (site, visitor)
                           JOIN page_views g ON g.site = i.site AND g.visitor = i.visitor) g
                  WHERE of_goal_path IS NOT NULL AND g.path = of_goal_path
                    AND g.viewed_at >= goals_from AND g.viewed_at < goals_until
                    AND (as_of IS NULL OR pg_visible_in_snapshot(g.recorded_xid, as_of))) reached
             ON reached.site = v.site AND reached.visitor = v.visitor
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
       AND (of_event IS NULL OR converted.visitor IS NOT NULL)
       AND (of_goal_path IS NULL OR reached.visitor IS NOT NULL)
       AND (as_of IS NULL OR pg_visible_in_snapshot(v.recorded_xid, as_of))
$$;

-- As migrations/0019 wrote it, but for the count of changes: detaching expired days removes views.
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
    -- First, before any lock on page_views: a bump that waited (a rebuild running) must not hold
    -- ingest back. Within lock_timeout, as every lock here.
    UPDATE tally_raw_changes SET changes = changes + 1;
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
