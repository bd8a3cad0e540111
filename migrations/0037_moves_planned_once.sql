-- tally_visit_moves planned once a session, for any array, as tally_visitor_moves is
-- (migrations/dimension_functions.sql says why): with 200 views/s arriving with ids and stats
-- asked for in a loop (1M views rolled up, pip), a stats request's p90 25 -> 14 ms and p99
-- 34 -> 19 ms with both; a first fold of 1M views and a minutely one of 1,000 as fast as before
-- (docs/BENCHMARKS.md, "Stats while views with ids arrive").
ALTER FUNCTION tally_visit_moves(tally_visitor_of_day[], pg_snapshot) SET plan_cache_mode = force_generic_plan;
