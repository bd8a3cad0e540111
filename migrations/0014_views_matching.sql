-- The views of [start, stop) that match every given filter (NULL: no filter on that
-- dimension; `referrers` lists the domains a referrer filter stands for). One definition
-- for every filtered read in tally/queries.sql (stats, days, recent, export), so a new
-- dimension's filter is one line here. LANGUAGE sql, STABLE, one SELECT, not STRICT: the
-- planner inlines it into the calling query, so the plans are those of the query written
-- out (tests/test_web_exact.py checks that no function scan is left).
CREATE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    of_path text, referrers text[], of_source text, of_medium text, of_campaign text,
    of_country text, of_browser text, of_os text, of_device text
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
$$;
