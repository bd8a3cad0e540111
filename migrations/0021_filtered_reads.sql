-- Filtered answers read the matching raw views (docs/ARCHITECTURE.md, "Filters read the raw
-- views"): a scan of the window's views, made cheaper here in two ways.
--
-- The goal filters (`?event=`, `?goal_path=`: the views of the visitors who sent the event or
-- viewed the page) were `(site, visitor) IN (subquery)` inside an OR (no filter given: no
-- condition). PostgreSQL keeps such a test as a hashed subplan attached to the scan of each
-- partition, and builds its hash once per partition: with a partition a day, a 30-day window
-- read the events (or, for goal_path, every view of the window) 30 times. As a join with the
-- visitors found once, the hash is built once for all the partitions; with no goal filter the
-- planner removes the join.
--
-- And PostgreSQL scans in parallel workers only when every function of the query is marked
-- PARALLEL SAFE, which a function is not unless it says so: these two only read.
CREATE OR REPLACE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    of_path text, referrers text[], of_source text, of_medium text, of_campaign text,
    of_country text, of_browser text, of_os text, of_device text,
    of_event text, of_goal_path text
) RETURNS SETOF page_views
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT v.* FROM page_views v
      LEFT JOIN (SELECT DISTINCT e.site, e.visitor FROM events e
                  WHERE of_event IS NOT NULL AND e.name = of_event
                    AND e.occurred_at >= start AND e.occurred_at < stop) converted
             ON converted.site = v.site AND converted.visitor = v.visitor
      LEFT JOIN (SELECT DISTINCT g.site, g.visitor FROM page_views g
                  WHERE of_goal_path IS NOT NULL AND g.path = of_goal_path
                    AND g.viewed_at >= start AND g.viewed_at < stop) reached
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
$$;

ALTER FUNCTION tally_visits_of(tally_visit_view[]) PARALLEL SAFE;
