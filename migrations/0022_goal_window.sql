-- A goal filter (`?event=`, `?goal_path=`) narrows an answer to the visitors who reached the
-- goal in the answer's window. A filtered answer reads the views of the whole UTC days its
-- window meets (a visit never crosses a UTC midnight, but may a local one: migrations/0017),
-- and looked the goals up over the same UTC days: a Signup sent the evening before the window
-- in a zone behind UTC, or one dated tomorrow, narrowed the answer to its visitor while the
-- same answer's `top_events` (read over the window) did not list it. The goals now have
-- bounds of their own.
CREATE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    of_path text, referrers text[], of_source text, of_medium text, of_campaign text,
    of_country text, of_browser text, of_os text, of_device text,
    of_event text, of_goal_path text, goals_from timestamptz, goals_until timestamptz
) RETURNS SETOF page_views
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT v.* FROM page_views v
      LEFT JOIN (SELECT DISTINCT e.site, e.visitor FROM events e
                  WHERE of_event IS NOT NULL AND e.name = of_event
                    AND e.occurred_at >= goals_from AND e.occurred_at < goals_until) converted
             ON converted.site = v.site AND converted.visitor = v.visitor
      LEFT JOIN (SELECT DISTINCT g.site, g.visitor FROM page_views g
                  WHERE of_goal_path IS NOT NULL AND g.path = of_goal_path
                    AND g.viewed_at >= goals_from AND g.viewed_at < goals_until) reached
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

-- The form of 0021 stays, the goals over the views' own bounds, for the web processes that run
-- the release before this one until they are replaced (a release runs beside the old dynos).
CREATE OR REPLACE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    of_path text, referrers text[], of_source text, of_medium text, of_campaign text,
    of_country text, of_browser text, of_os text, of_device text,
    of_event text, of_goal_path text
) RETURNS SETOF page_views
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM tally_views_matching(start, stop, of_site, of_path, referrers, of_source, of_medium,
                                       of_campaign, of_country, of_browser, of_os, of_device, of_event,
                                       of_goal_path, start, stop)
$$;
