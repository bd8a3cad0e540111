-- Goals as filters (issue 18, part 3): `?event=NAME` keeps the views of the visitors who sent
-- that event in the window, `?goal_path=/p` those of the visitors who viewed /p in it; with
-- the dimension filters, one definition of the matching views for every filtered read
-- (migrations/0014 says why it is one inlinable SQL function).
DROP FUNCTION tally_views_matching(timestamptz, timestamptz, text, text, text[], text, text, text, text, text,
                                   text, text);
CREATE FUNCTION tally_views_matching(
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

-- An event's name in a window: what ?event= and top_events read.
CREATE INDEX events_name_idx ON events (name, occurred_at);
