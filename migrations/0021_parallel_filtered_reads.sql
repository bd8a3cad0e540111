-- Filtered answers read the matching raw views (docs/ARCHITECTURE.md, "Filters read the raw
-- views"): a scan of the window's views. PostgreSQL scans in parallel workers only when every
-- function of the query is marked PARALLEL SAFE, and a function is PARALLEL UNSAFE unless it
-- says otherwise: these two only read, so they say so. With two workers (PostgreSQL's default
-- max_parallel_workers_per_gather) the scan of 3M views for one country takes about half the
-- time (docs/BENCHMARKS.md, "Filters").
ALTER FUNCTION tally_views_matching(timestamptz, timestamptz, text, text, text[], text, text, text, text, text,
                                    text, text, text, text) PARALLEL SAFE;
ALTER FUNCTION tally_visits_of(tally_visit_view[]) PARALLEL SAFE;
