-- A visitor is anyone who sent something that day: views or events (DESIGN.md, "Visits and
-- events": a visit is a visitor's views and events). The whole site's visitors counted the ids
-- of views only, while its visits and `top_events` counted the ids of events too: a server's
-- Purchase, or a click just after the salt's UTC midnight (a new id with no view), made a visit
-- and a converting visitor but no visitor, and a conversion rate over 1 (capped to read 1.0).
-- Now the whole site's row (dim '') takes each id's first and last bucket of its views and
-- events together; the dimensions' rows stay the views' (a panel row is a value of a view).
--
-- tally_visitor_moves is as in migrations/0020 but for `seen`, which holds the events too
-- (their dimensions NULL, their name under `event`): one grouping makes every span.
CREATE OR REPLACE FUNCTION tally_visitor_moves(days tally_visitor_of_day[], watermark xid8, in_progress xid8[], snapshot pg_snapshot)
RETURNS TABLE (site text, dim text, value text, bucket timestamptz, prev_last timestamptz, firsts integer,
               lasts integer, pairs integer)
LANGUAGE sql STABLE AS $$
    WITH wanted AS (
        -- In order, so the views come out of the index in order and the spans below sort
        -- little groups (an id's views of a day), not all views at once.
        SELECT DISTINCT d.site, d.visitor, d.day + shift AS day
          FROM unnest(days) AS d CROSS JOIN (VALUES (-1), (0), (1)) AS shifts (shift)
         ORDER BY 1, 2, 3
    ), seen AS (
        SELECT v.site, v.visitor, w.day, date_bin('15 minutes', v.viewed_at, '2000-01-01 00:00+00') AS bucket,
               v.recorded_xid < watermark AND v.recorded_xid <> ALL (in_progress) AS folded,
               v.path, tally_referrer_domain(v.referrer, v.site) AS referrer, v.source, v.medium, v.campaign,
               v.country, v.browser, v.os, v.device, NULL::text AS event
          FROM wanted w
          JOIN page_views v
            ON v.site = w.site AND v.visitor = w.visitor
           AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
         WHERE v.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(v.recorded_xid, snapshot))
        UNION ALL
        SELECT e.site, e.visitor, w.day, date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00'),
               e.recorded_xid < watermark AND e.recorded_xid <> ALL (in_progress),
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, e.name
          FROM wanted w
          JOIN events e
            ON e.site = w.site AND e.visitor = w.visitor
           AND e.occurred_at >= w.day::timestamp AT TIME ZONE 'UTC'
           AND e.occurred_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC'
         WHERE e.visitor IS NOT NULL AND (snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, snapshot))
    ), spans AS MATERIALIZED (
        -- Per id, UTC day and value: its first and last bucket of all views, and of those folded.
        -- THE list of dimensions again (tests/test_audience.py keeps it equal to tally/dimensions.py).
        SELECT seen.site, seen.visitor, seen.day, dims.dim, dims.value,
               min(seen.bucket) AS new_first, max(seen.bucket) AS new_last,
               min(seen.bucket) FILTER (WHERE folded) AS old_first, max(seen.bucket) FILTER (WHERE folded) AS old_last
          FROM seen
         CROSS JOIN LATERAL (VALUES
               ('', ''),
               ('path', path),
               ('referrer', referrer),
               ('source', source),
               ('medium', medium),
               ('campaign', campaign),
               ('country', country),
               ('browser', browser),
               ('os', os),
               ('device', device),
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
    HAVING sum(pair.pairs) <> 0
$$;

-- What is rolled up comes along: the whole site's cells and overlap pairs of every (id, UTC day)
-- with a folded event move from the span of its folded views to that of its folded views and
-- events, as a rollup would have moved them, on the days whose views are all still here; older
-- days keep the ids of their views alone. Retention drops day partitions whole, and deletes the
-- rest (the default partition, a converted table's) oldest first up to an instant: only the
-- oldest view's day may have lost part of its views, and only if that view is not in a day's
-- own partition and a cleanup has ever run (its jobs are in procrastinate_jobs until pruned).
-- Under the rollup's lock: no rollup folds meanwhile.
LOCK TABLE page_view_rollup_state IN EXCLUSIVE MODE;

WITH oldest AS (
    SELECT (viewed_at AT TIME ZONE 'UTC')::date AS day,
           tableoid::regclass::text ~ '^page_views_p[0-9]{8}$'
           OR NOT EXISTS (SELECT FROM procrastinate_jobs WHERE task_name = 'cleanup_old_page_views') AS whole
      FROM page_views ORDER BY viewed_at LIMIT 1
), state AS (
    SELECT watermark, in_progress,
           coalesce((SELECT day + CASE WHEN whole THEN 0 ELSE 1 END FROM oldest), '-infinity') AS complete_from
      FROM page_view_rollup_state
), wanted AS (
    SELECT DISTINCT e.site, e.visitor, (e.occurred_at AT TIME ZONE 'UTC')::date + shift AS day
      FROM events e, state, (VALUES (-1), (0), (1)) AS shifts (shift)
     WHERE e.visitor IS NOT NULL AND e.recorded_xid < state.watermark AND e.recorded_xid <> ALL (state.in_progress)
       AND (e.occurred_at AT TIME ZONE 'UTC')::date >= state.complete_from
), seen AS (
    SELECT v.site, v.visitor, w.day, date_bin('15 minutes', v.viewed_at, '2000-01-01 00:00+00') AS bucket,
           false AS is_event
      FROM wanted w JOIN page_views v
        ON v.site = w.site AND v.visitor = w.visitor
       AND v.viewed_at >= w.day::timestamp AT TIME ZONE 'UTC' AND v.viewed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC',
           state
     WHERE v.recorded_xid < state.watermark AND v.recorded_xid <> ALL (state.in_progress)
    UNION ALL
    SELECT e.site, e.visitor, w.day, date_bin('15 minutes', e.occurred_at, '2000-01-01 00:00+00'), true
      FROM wanted w JOIN events e
        ON e.site = w.site AND e.visitor = w.visitor
       AND e.occurred_at >= w.day::timestamp AT TIME ZONE 'UTC' AND e.occurred_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC',
           state
     WHERE e.recorded_xid < state.watermark AND e.recorded_xid <> ALL (state.in_progress)
), spans AS MATERIALIZED (
    -- As the rollups hold them (old: the views') and as they count now (new: views and events).
    SELECT site, visitor, day, min(bucket) AS new_first, max(bucket) AS new_last,
           min(bucket) FILTER (WHERE NOT is_event) AS old_first, max(bucket) FILTER (WHERE NOT is_event) AS old_last
      FROM seen GROUP BY 1, 2, 3
), paired AS (
    SELECT spans.*,
           CASE WHEN lag(day) OVER same_id = day - 1 THEN lag(new_last) OVER same_id END AS prev_new,
           CASE WHEN lag(day) OVER same_id = day - 1 THEN lag(old_last) OVER same_id END AS prev_old
      FROM spans
    WINDOW same_id AS (PARTITION BY site, visitor ORDER BY day)
), moving AS (
    -- The days beside were read for their last buckets; only complete days move.
    SELECT spans.* FROM spans, state WHERE spans.day >= state.complete_from
), cell_moves AS (
    SELECT site, bucket, sum(firsts)::integer AS firsts, sum(lasts)::integer AS lasts
      FROM (SELECT site, new_first AS bucket, 1 AS firsts, 0 AS lasts FROM moving WHERE new_first IS DISTINCT FROM old_first
            UNION ALL
            SELECT site, old_first, -1, 0 FROM moving WHERE old_first <> new_first
            UNION ALL
            SELECT site, new_last, 0, 1 FROM moving WHERE new_last IS DISTINCT FROM old_last
            UNION ALL
            SELECT site, old_last, 0, -1 FROM moving WHERE old_last <> new_last) moved
     GROUP BY 1, 2
    HAVING sum(firsts) <> 0 OR sum(lasts) <> 0
), day_moves AS (
    INSERT INTO page_view_day_values (site, dim, value, day, views, cells)
    SELECT site, '', '', (bucket AT TIME ZONE 'UTC')::date, 0,
           array_agg(ARRAY[(extract(epoch FROM bucket - date_trunc('day', bucket, 'UTC')) / 900)::integer,
                           0, firsts, lasts] ORDER BY bucket)
      FROM cell_moves GROUP BY 1, 4
    ON CONFLICT (site, dim, value, day) DO UPDATE
       SET cells = tally_add_cells(page_view_day_values.cells, EXCLUDED.cells)
)
INSERT INTO page_view_day_overlaps (site, dim, value, first_bucket, prev_last, visitors)
SELECT site, '', '', pair.bucket, pair.prev_last, sum(pair.pairs)
  FROM paired, state,
       LATERAL (VALUES (new_first, prev_new, 1), (old_first, prev_old, -1)) AS pair (bucket, prev_last, pairs)
 WHERE paired.day >= state.complete_from AND pair.bucket IS NOT NULL AND pair.prev_last IS NOT NULL
   AND (new_first, prev_new) IS DISTINCT FROM (old_first, prev_old)
 GROUP BY 1, 2, 3, 4, 5
HAVING sum(pair.pairs) <> 0
ON CONFLICT (site, dim, value, first_bucket, prev_last) DO UPDATE
   SET visitors = page_view_day_overlaps.visitors + EXCLUDED.visitors;

DELETE FROM page_view_day_overlaps WHERE visitors = 0;
