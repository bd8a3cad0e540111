-- The functions that name every dimension, as templates: rendered from tally/dimensions.py's
-- table (tally/dimension_sql.py fills in its markers) and applied by the release step after
-- the numbered migrations, every release, as CREATE OR REPLACE. The one exception to "schema as
-- numbered files": these functions' columns are the table's, so a dimension added there is a
-- line, not a migration that writes the three out again (the release adds its column first).
-- Rendered with the nine dimensions of migrations/0023 and 0033 they are those
-- migrations' last definitions, word for word (tests/test_dimension_sql.py).
--
-- Change a function here like a migration would, knowing the old release's processes run
-- beside the new one's until they are replaced: the rollup and the moves keep their
-- signatures. tally_views_matching takes an argument per dimension: with one more it is a new
-- function beside the old one, which the old release's web calls until it is gone.

-- Fold the views and events committed since the last rollup (migrations/0004's snapshot rules)
-- into the rollup tables; how many views it folded. As migrations/0020 last wrote it, but for
-- the pairs held in the day's row (migrations/0031) and the settled days (migrations/0046).
CREATE OR REPLACE FUNCTION tally_rollup_page_views() RETURNS bigint LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET jit = off
SET work_mem = '64MB'
AS $$
DECLARE
    state page_view_rollup_state;
    snapshot pg_snapshot;
    folded bigint;
    earliest date;  -- the first UTC day of a page_view_day_values row this fold wrote
    settled date;
BEGIN
    SELECT * INTO state FROM page_view_rollup_state FOR UPDATE;
    -- Statistics that say a day has no views with ids would send its probes by id through
    -- the wrong index (migrations/0038).
    PERFORM tally_analyze_days_with_unseen_ids(ARRAY(SELECT DISTINCT day FROM page_view_tail_days));
    snapshot := pg_current_snapshot();

    WITH fresh AS MATERIALIZED (
        SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket, visitor,
               {{dimension_columns}}
          FROM page_views
         WHERE recorded_xid >= state.watermark AND pg_visible_in_snapshot(recorded_xid, snapshot)
        UNION ALL
        SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket, visitor,
               {{dimension_columns}}
          FROM page_views
         WHERE recorded_xid = ANY (state.in_progress) AND pg_visible_in_snapshot(recorded_xid, snapshot)
    ), fresh_events AS MATERIALIZED (
        SELECT site, date_bin('15 minutes', occurred_at, '2000-01-01 00:00+00') AS bucket, visitor, name
          FROM events
         WHERE recorded_xid >= state.watermark AND pg_visible_in_snapshot(recorded_xid, snapshot)
        UNION ALL
        SELECT site, date_bin('15 minutes', occurred_at, '2000-01-01 00:00+00') AS bucket, visitor, name
          FROM events
         WHERE recorded_xid = ANY (state.in_progress) AND pg_visible_in_snapshot(recorded_xid, snapshot)
    ), grouped AS MATERIALIZED (
        -- One pass over the fresh views; the referrer's domain is parsed once per group.
        SELECT site, bucket, visitor, views, {{dimension_values}}
          FROM (SELECT site, bucket, visitor, {{dimension_columns}}, count(*)::integer AS views
                  FROM fresh GROUP BY 1, 2, 3, {{column_positions:4}}) by_view
    ), fresh_ids AS MATERIALIZED (
        -- Each (id, UTC day) with fresh views or events.
        SELECT ARRAY(SELECT DISTINCT ROW(site, visitor, (bucket AT TIME ZONE 'UTC')::date)::tally_visitor_of_day
                       FROM (SELECT site, visitor, bucket FROM grouped
                             UNION ALL
                             SELECT site, visitor, bucket FROM fresh_events) with_ids
                      WHERE visitor IS NOT NULL) AS days
    ), site_buckets AS MATERIALIZED (
        SELECT site, bucket, sum(views)::bigint AS views FROM grouped GROUP BY 1, 2
    ), buckets AS (
        INSERT INTO page_view_buckets (site, bucket, views)
        SELECT site, bucket, views FROM site_buckets
        ON CONFLICT (site, bucket) DO UPDATE SET views = page_view_buckets.views + EXCLUDED.views
    ), visit_moves AS MATERIALIZED (
        -- Each (id, UTC day) with fresh views: its visits formed again, and those formed before.
        SELECT site, visitor, day, (visit).*, date_bin('15 minutes', (visit).started_at, '2000-01-01 00:00+00') AS bucket,
               delta
          FROM tally_visit_moves((SELECT days FROM fresh_ids), snapshot)
    ), visit_days AS (
        INSERT INTO page_view_visit_days (site, visitor, day, visits, folded_on)
        SELECT site, visitor, day,
               array_agg(ROW(started_at, ended_at, entry_path, exit_path, views, events)::tally_visit
                         ORDER BY started_at),
               (now() AT TIME ZONE 'UTC')::date
          FROM visit_moves WHERE delta = 1 GROUP BY 1, 2, 3
        ON CONFLICT (site, visitor, day) DO UPDATE SET visits = EXCLUDED.visits, folded_on = EXCLUDED.folded_on
    ), visit_buckets AS (
        INSERT INTO page_view_visit_buckets (site, bucket, visits, bounces, views, duration_us)
        SELECT site, bucket, sum(delta), coalesce(sum(delta) FILTER (WHERE views = 1 AND events = 0), 0), sum(delta * views),
               sum(delta * (extract(epoch FROM ended_at - started_at) * 1000000)::bigint)
          FROM visit_moves GROUP BY 1, 2
        ON CONFLICT (site, bucket) DO UPDATE
           SET visits = page_view_visit_buckets.visits + EXCLUDED.visits,
               bounces = page_view_visit_buckets.bounces + EXCLUDED.bounces,
               views = page_view_visit_buckets.views + EXCLUDED.views,
               duration_us = page_view_visit_buckets.duration_us + EXCLUDED.duration_us
    ), visitor_moves AS MATERIALIZED (
        SELECT * FROM tally_visitor_moves((SELECT days FROM fresh_ids), state.watermark, state.in_progress, snapshot)
    ), cells AS MATERIALIZED (
        -- Per value and bucket: views, and visits per entry and exit page (their `views`), and
        -- how the ids' first and last buckets moved.
        SELECT site, dim, value, bucket, sum(views)::integer AS views, sum(firsts)::integer AS firsts,
               sum(lasts)::integer AS lasts
          FROM (SELECT site, dims.dim, dims.value, bucket, views, 0 AS firsts, 0 AS lasts
                  FROM grouped
                 CROSS JOIN LATERAL (VALUES
                       -- Each group once per dimension it has a value of.
                       {{dimension_pairs}}) AS dims (dim, value)
                 WHERE dims.value IS NOT NULL
                UNION ALL
                SELECT site, '', '', bucket, views::integer, 0, 0 FROM site_buckets
                UNION ALL
                -- Events by name, as a dimension of their own (not a view's: no filter, no panel of views).
                SELECT site, 'event', name, bucket, 1, 0, 0 FROM fresh_events
                UNION ALL
                SELECT site, 'entry', entry_path, bucket, delta, 0, 0 FROM visit_moves
                UNION ALL
                SELECT site, 'exit', exit_path, bucket, delta, 0, 0 FROM visit_moves
                UNION ALL
                SELECT site, dim, value, bucket, 0, firsts, lasts FROM visitor_moves WHERE prev_last IS NULL) counted
         GROUP BY 1, 2, 3, 4
        HAVING sum(views) <> 0 OR sum(firsts) <> 0 OR sum(lasts) <> 0
    ), day_values AS (
        -- A row per value and UTC day: its cells, and the pairs of ids of two UTC days in a row,
        -- each a first bucket and the last the day before, by number, with their steps
        -- (migrations/0031). Most rows have no pairs: the CASEs below spare them the call of
        -- a SQL function (not inlined: 3-7 us a row, 5% of a minutely rollup).
        INSERT INTO page_view_day_values (site, dim, value, day, views, cells, pairs, pair_steps)
        SELECT site, dim, value, day, views, cells, pairs,
               CASE WHEN pairs = '{}' THEN '{}'::integer[] ELSE tally_pair_steps(pairs) END
          FROM (SELECT site, dim, value, (bucket AT TIME ZONE 'UTC')::date AS day, sum(views) AS views,
                       coalesce(array_agg(ARRAY[(extract(epoch FROM bucket - date_trunc('day', bucket, 'UTC')) / 900)::integer,
                                                views, firsts, lasts] ORDER BY bucket)
                                FILTER (WHERE prev_last IS NULL), '{}') AS cells,
                       coalesce(array_agg(ARRAY[(extract(epoch FROM bucket - date_trunc('day', bucket, 'UTC')) / 900)::integer,
                                                (extract(epoch FROM prev_last - (date_trunc('day', bucket, 'UTC')
                                                                                 - interval '1 day')) / 900)::integer,
                                                pairs] ORDER BY bucket, prev_last)
                                FILTER (WHERE prev_last IS NOT NULL), '{}') AS pairs
                  FROM (SELECT site, dim, value, bucket, NULL::timestamptz AS prev_last, views, firsts, lasts, 0 AS pairs
                          FROM cells
                        UNION ALL
                        SELECT site, dim, value, bucket, prev_last, 0, 0, 0, sum(pairs)::integer
                          FROM visitor_moves WHERE prev_last IS NOT NULL
                         GROUP BY 1, 2, 3, 4, 5 HAVING sum(pairs) <> 0) moved
                 GROUP BY 4, 1, 2, 3  -- in the primary key's order: the index fills page by page
               ) AS by_day
        ON CONFLICT (site, dim, value, day) DO UPDATE
           SET views = page_view_day_values.views + EXCLUDED.views,
               cells = tally_add_cells(page_view_day_values.cells, EXCLUDED.cells),
               pairs = CASE WHEN EXCLUDED.pairs = '{}' THEN page_view_day_values.pairs
                            ELSE tally_add_pairs(page_view_day_values.pairs, EXCLUDED.pairs) END,
               pair_steps = CASE WHEN EXCLUDED.pair_steps = '{}' THEN page_view_day_values.pair_steps
                                 ELSE tally_add_steps(page_view_day_values.pair_steps, EXCLUDED.pair_steps) END
        RETURNING day
    )
    SELECT count(*), (SELECT min(day) FROM day_values) INTO folded, earliest FROM fresh;

    -- Visits no rollup changed for 3 days can go: an id from /api/collect brings no views after
    -- its salt's day. Under the state lock, so no rollup reads a row while it is deleted.
    DELETE FROM page_view_visit_days WHERE folded_on < (now() AT TIME ZONE 'UTC')::date - 3;

    -- The days before yesterday are settled while no fold writes them (migrations/0046): a
    -- minutely fold writes today's rows, and yesterday's as an id's moves reach back a day.
    settled := greatest(state.settled_before, (now() AT TIME ZONE 'UTC')::date - 1);
    UPDATE page_view_rollup_state
       SET watermark = pg_snapshot_xmax(snapshot),
           in_progress = ARRAY(SELECT pg_snapshot_xip(snapshot) ORDER BY 1),
           rolled_up_at = now(),
           last_folded = folded,
           settled_before = settled,
           settled_by = CASE WHEN earliest < settled OR state.settled_by IS NULL THEN pg_current_xact_id()
                             ELSE state.settled_by END;
    RETURN folded;
END
$$;

-- How the views and events of some (site, id, UTC day)s move the ids' first and last buckets,
-- per dimension value ('' for the whole site); as migrations/0023 last wrote it (0020 says how).
CREATE OR REPLACE FUNCTION tally_visitor_moves(days tally_visitor_of_day[], watermark xid8, in_progress xid8[], snapshot pg_snapshot)
RETURNS TABLE (site text, dim text, value text, bucket timestamptz, prev_last timestamptz, firsts integer,
               lasts integer, pairs integer)
LANGUAGE plpgsql STABLE
-- Planned once a session, for any array: a stats request calls it twice with the few (id, day)s
-- changed since its kept answer (tally/web/tail_moves.py), and planning for each call's values
-- cost more than reading them. No plan of it depends on the values since its views are read
-- through the index whatever the plan (below): a first fold of 1M views is as fast either way.
-- PL/pgSQL, not SQL, and the days read as two bounds known when the plan starts: PostgreSQL 15
-- plans a SQL function's statements at every call whatever this says, and a plan that reads
-- `page_views` an (id, day) at a time starts every day partition's scan unless bounds it is
-- given at its start rule them out. With a year of partitions (375) a call took 45 ms on 15
-- (its planning) and 4 ms on 18 (its start); now 0.4-0.7 ms on both (migrations/0041).
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    -- The UTC days read, the day before and after each given (its pairs) included.
    reads_from timestamptz := (SELECT min(d.day) - 1 FROM unnest(days) d)::timestamp AT TIME ZONE 'UTC';
    reads_until timestamptz := (SELECT max(d.day) + 2 FROM unnest(days) d)::timestamp AT TIME ZONE 'UTC';
BEGIN
    RETURN QUERY
    WITH wanted AS (
        -- In order, so the views come out of the index in order and the spans below sort
        -- little groups (an id's views of a day), not all views at once.
        SELECT DISTINCT d.site, d.visitor, d.day + shift AS day
          FROM unnest(days) AS d CROSS JOIN (VALUES (-1), (0), (1)) AS shifts (shift)
         ORDER BY 1, 2, 3
    ), seen AS (
        SELECT v.site, v.visitor, w.day, date_bin('15 minutes', v.viewed_at, '2000-01-01 00:00+00') AS bucket,
               v.recorded_xid < watermark AND v.recorded_xid <> ALL (in_progress) AS folded,
               {{dimension_values:v}}, NULL::text AS event
          FROM wanted w
         CROSS JOIN LATERAL (
               -- An (id, day)'s views through the index of an id's views, always: as a join, a
               -- plan made for the array given (PostgreSQL 18 makes one for a SQL function's
               -- call) hashed every view of every day, its cost growing with the table, as the
               -- planner costs each probe as one of every day partition's indexes, not the one
               -- day's it reads (docs/ARCHITECTURE.md, "Plans and JIT").
               SELECT * FROM page_views v
                WHERE v.site = w.site AND v.visitor = w.visitor
                  AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'
                  AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
                  AND v.viewed_at >= reads_from AND v.viewed_at < reads_until
                  AND v.visitor IS NOT NULL
               OFFSET 0) v
         WHERE snapshot IS NULL OR pg_visible_in_snapshot(v.recorded_xid, snapshot)
        UNION ALL
        SELECT e.site, e.visitor, w.day, date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00'),
               e.recorded_xid < watermark AND e.recorded_xid <> ALL (in_progress),
               {{dimension_nulls}}, e.name
          FROM wanted w
          JOIN events e
            ON e.site = w.site AND e.visitor = w.visitor
           AND e.occurred_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND e.occurred_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
         WHERE e.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, snapshot))
    ), spans AS MATERIALIZED (
        -- Per id, UTC day and value: its first and last bucket of all views, and of those folded.
        SELECT seen.site, seen.visitor, seen.day, dims.dim, dims.value,
               min(seen.bucket) AS new_first, max(seen.bucket) AS new_last,
               min(seen.bucket) FILTER (WHERE folded) AS old_first, max(seen.bucket) FILTER (WHERE folded) AS old_last
          FROM seen
         CROSS JOIN LATERAL (VALUES
               ('', ''),
               {{dimension_pairs}},
               ('event', event)) AS dims (dim, value)
         WHERE dims.value IS NOT NULL
         GROUP BY seen.site, seen.visitor, seen.day, dims.dim, dims.value
    ), paired AS (
        -- The spans of ids seen on more than one of the days read (few: ids from /api/collect
        -- live one day), each with the same value's last bucket the UTC day before, as it was and is.
        SELECT spans.*,
               CASE WHEN lag(spans.day) OVER same_value = spans.day - 1 THEN lag(spans.new_last) OVER same_value END
                   AS prev_new,
               CASE WHEN lag(spans.day) OVER same_value = spans.day - 1 THEN lag(spans.old_last) OVER same_value END
                   AS prev_old
          FROM spans
         WHERE (spans.site, spans.visitor) IN (SELECT site, visitor FROM spans GROUP BY 1, 2 HAVING min(day) < max(day))
        WINDOW same_value AS (PARTITION BY spans.site, spans.visitor, spans.dim, spans.value ORDER BY spans.day)
    )
    SELECT moved.site, moved.dim, moved.value, moved.bucket, NULL::timestamptz, sum(moved.firsts)::integer,
           sum(moved.lasts)::integer, 0
      FROM (SELECT spans.site, spans.dim, spans.value, new_first AS bucket, 1 AS firsts, 0 AS lasts
              FROM spans WHERE new_first IS DISTINCT FROM old_first
            UNION ALL
            SELECT spans.site, spans.dim, spans.value, old_first, -1, 0 FROM spans WHERE old_first <> new_first
            UNION ALL
            SELECT spans.site, spans.dim, spans.value, new_last, 0, 1 FROM spans WHERE new_last IS DISTINCT FROM old_last
            UNION ALL
            SELECT spans.site, spans.dim, spans.value, old_last, 0, -1 FROM spans WHERE old_last <> new_last) moved
     GROUP BY 1, 2, 3, 4
    HAVING sum(moved.firsts) <> 0 OR sum(moved.lasts) <> 0
    UNION ALL
    SELECT paired.site, paired.dim, paired.value, pair.bucket, pair.prev_last, 0, 0, sum(pair.pairs)::integer
      FROM paired,
           LATERAL (VALUES (paired.new_first, paired.prev_new, 1), (paired.old_first, paired.prev_old, -1))
               AS pair (bucket, prev_last, pairs)
     WHERE pair.bucket IS NOT NULL AND pair.prev_last IS NOT NULL
       AND (paired.new_first, paired.prev_new) IS DISTINCT FROM (paired.old_first, paired.prev_old)
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(pair.pairs) <> 0;
END
$$;

-- The views in [start, stop) of a site (every site: NULL) matching every filter given (NULL: no
-- filter on that dimension), and of the visitors who reached the goals in [goals_from,
-- goals_until); as migrations/0033 last wrote it. A filtered answer carried forward
-- (tally/web/carried.py) reads a few visitors' views: those of the ids (of_sites, of_visitors)
-- alone, through the index of a visitor's views, and with `as_of` only the views and goals that
-- snapshot saw; with `anonymous_from`, the views without an id recorded after a snapshot: by
-- transactions from its xmax on, or running then (`anonymous_running`). Not from its xmin: that
-- is the oldest transaction of the whole server, which one long transaction holds back.
CREATE OR REPLACE FUNCTION tally_views_matching(
    start timestamptz, stop timestamptz, of_site text,
    {{filter_parameters}},
    of_event text, of_goal_path text, goals_from timestamptz, goals_until timestamptz,
    of_sites text[], of_visitors bigint[], as_of pg_snapshot, anonymous_from xid8, anonymous_running xid8[]
) RETURNS SETOF page_views
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT v.* FROM (
        SELECT * FROM page_views WHERE of_visitors IS NULL AND anonymous_from IS NULL
        UNION ALL  -- a few ids: a probe an id (a LATERAL subquery: never a hash of every view)
        SELECT p.* FROM unnest(of_sites, of_visitors) AS i (site, visitor)
         CROSS JOIN LATERAL (SELECT * FROM page_views p
                              WHERE p.site = i.site AND p.visitor = i.visitor
                                AND p.viewed_at >= start AND p.viewed_at < stop OFFSET 0) p
        UNION ALL
        SELECT * FROM page_views
         WHERE anonymous_from IS NOT NULL AND visitor IS NULL  -- through the index on recorded_xid
           AND (recorded_xid >= anonymous_from OR recorded_xid = ANY (anonymous_running))
    ) v
      LEFT JOIN (SELECT DISTINCT e.site, e.visitor
                   FROM (SELECT * FROM events WHERE of_visitors IS NULL
                         UNION ALL  -- a few ids: their events through the index of a sender's
                         SELECT e.* FROM unnest(of_sites, of_visitors) AS i (site, visitor)
                          CROSS JOIN LATERAL (SELECT * FROM events e
                                               WHERE e.site = i.site AND e.visitor = i.visitor AND e.name = of_event
                                                 AND e.occurred_at >= goals_from AND e.occurred_at < goals_until
                                              OFFSET 0) e) e
                  WHERE of_event IS NOT NULL AND e.name = of_event
                    AND e.occurred_at >= goals_from AND e.occurred_at < goals_until
                    AND (as_of IS NULL OR pg_visible_in_snapshot(e.recorded_xid, as_of))) converted
             ON converted.site = v.site AND converted.visitor = v.visitor
      LEFT JOIN (SELECT DISTINCT g.site, g.visitor
                   FROM (SELECT * FROM page_views WHERE of_visitors IS NULL
                         UNION ALL
                         SELECT g.* FROM unnest(of_sites, of_visitors) AS i (site, visitor)
                          CROSS JOIN LATERAL (SELECT * FROM page_views g
                                               WHERE g.site = i.site AND g.visitor = i.visitor AND g.path = of_goal_path
                                                 AND g.viewed_at >= goals_from AND g.viewed_at < goals_until
                                              OFFSET 0) g) g
                  WHERE of_goal_path IS NOT NULL AND g.path = of_goal_path
                    AND g.viewed_at >= goals_from AND g.viewed_at < goals_until
                    AND (as_of IS NULL OR pg_visible_in_snapshot(g.recorded_xid, as_of))) reached
             ON reached.site = v.site AND reached.visitor = v.visitor
     WHERE v.viewed_at >= start AND v.viewed_at < stop
       AND (of_site IS NULL OR v.site = of_site)
       {{filter_conditions}}
       AND (of_event IS NULL OR converted.visitor IS NOT NULL)
       AND (of_goal_path IS NULL OR reached.visitor IS NOT NULL)
       AND (as_of IS NULL OR pg_visible_in_snapshot(v.recorded_xid, as_of))
$$;
