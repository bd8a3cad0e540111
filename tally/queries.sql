-- Every query Tally runs, one named block each, loaded into `tally.db.QUERIES`.
-- Parameters are %(name)s placeholders, bound by psycopg, never formatted in. Where a query lists
-- every dimension it says so with a marker, {{dimension_values}} and the like, which tally/db.py
-- fills from tally/dimensions.py's table when it loads this file (tally/dimension_sql.py).

-- delete_expired_page_views_batch --
-- Delete up to batch_size of the oldest rolled-up page views older than the cutoff from the
-- partitions retention does not drop whole (the default one, the legacy one); one short
-- transaction. Never a view before it is in the rollups, or stats would lose it.
-- Deleting from a partition by name fires no trigger of page_views: the statement counts itself
-- as a change of the raw views (migrations/0033) when it removed any.
WITH batch AS MATERIALIZED (
    SELECT tally_delete_expired_views_batch(%(cutoff)s, %(watermark)s, %(in_progress)s, %(batch_size)s) AS removed
), counted AS (
    UPDATE tally_raw_changes SET changes = changes + 1 WHERE (SELECT removed FROM batch) > 0
)
SELECT removed FROM batch

-- expired_page_view_partitions --
-- The partitions of page_views that lie wholly before the cutoff, oldest first.
SELECT partition::text AS name FROM tally_page_view_partitions WHERE ends <= %(cutoff)s ORDER BY ends

-- detach_rolled_up_partitions --
-- Detach the expired partitions named whose views the rollup holds: how many views went, and which.
SELECT views, detached FROM tally_detach_rolled_up_partitions(%(names)s::regclass[], %(watermark)s, %(in_progress)s)

-- drop_detached_days --
-- Drop the tables of the days retention detached; their names.
SELECT tally_drop_detached_days() AS dropped

-- page_view_partitions --
-- Every partition of page_views by name, the default one last. Not their ranges: a converted
-- table's page_views_legacy starts at -infinity, a time no Python datetime holds.
SELECT name, is_default FROM tally_page_view_partitions ORDER BY starts NULLS LAST

-- days_in_default_partition --
-- The UTC days of the views the default partition caught, from `since` on.
SELECT DISTINCT (viewed_at AT TIME ZONE 'UTC')::date AS day
  FROM page_views_default
 WHERE viewed_at >= %(since)s
 ORDER BY 1

-- ensure_day_partition --
-- The partition of one UTC day, made if missing, with its views moved out of the default one.
SELECT tally_ensure_day_partition(%(day)s) AS name

-- delete_expired_events_batch --
-- The same for custom events (migrations/0016): up to batch_size of the oldest rolled-up ones.
WITH deleted AS (
    DELETE FROM events
     WHERE id = ANY (ARRAY(
         SELECT id FROM events
          WHERE occurred_at < %(cutoff)s
            AND recorded_xid < %(watermark)s AND NOT recorded_xid = ANY (%(in_progress)s::xid8[])
          ORDER BY occurred_at
          LIMIT %(batch_size)s))
    RETURNING 1
)
SELECT count(*) AS removed FROM deleted

-- delete_finished_jobs_batch --
-- Delete up to batch_size finished jobs (and, by cascade, their events) last touched before the cutoff.
WITH doomed AS (
    SELECT job.id FROM procrastinate_jobs job
     WHERE job.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
       AND NOT EXISTS (
           SELECT 1 FROM procrastinate_events event
            WHERE event.job_id = job.id AND event.at >= %(cutoff)s)
     ORDER BY job.id
     LIMIT %(batch_size)s
), deleted AS (
    DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT count(*) AS removed FROM deleted

-- worker_heartbeats --
-- Workers whose heartbeat is younger than the stalled threshold, and the youngest heartbeat's
-- age, of those not known dead: a worker that holds a session lock (tally_worker_sessions) is
-- dead once its lock is free, as the session sweep judges it (a killed worker counted alive
-- for STALLED_AFTER_SECONDS; after a database restart, the old row beside the new one).
SELECT count(*) FILTER (WHERE w.last_heartbeat >= now() - make_interval(secs => %(stalled_after)s))
           AS alive,
       extract(epoch FROM now() - max(w.last_heartbeat))::float8 AS youngest_heartbeat_age
  FROM procrastinate_workers w
 WHERE NOT EXISTS (SELECT 1 FROM tally_worker_sessions s WHERE s.worker_id = w.id)
    OR EXISTS (SELECT 1 FROM tally_worker_locks l WHERE l.worker_id = w.id)

-- database_writable --
-- Whether views can be stored at all: a follower, a read-only role or default, or a plan over its
-- row limit (Heroku revokes INSERT) answers every read while refusing every write.
SELECT NOT pg_is_in_recovery()
       AND current_setting('transaction_read_only') = 'off'
       AND has_table_privilege('page_views', 'INSERT') AS writable

-- last_periodic_defer --
-- Age in seconds of the newest periodic defer any clock made. A clock defers a tick at its time,
-- so ticks dated over a minute ahead of the database's clock come from a clock whose system time
-- is off: left out, as one a day ahead made the age -86,400 s for a day (no alert could fire).
SELECT extract(epoch FROM now() - to_timestamp(max(defer_timestamp)))::float8 AS age
  FROM procrastinate_periodic_defers
 WHERE defer_timestamp <= extract(epoch FROM now()) + 60

-- insert_page_views --
-- Store a batch of views in one statement: all rows or none. The views come as one JSON array
-- of arrays in tally/web/view_writer.py's View order (tally/dimensions.py, VIEW_FIELDS): psycopg
-- dumps one string in C, where a list per column cost its Python about 15 us a view
-- (docs/ARCHITECTURE.md, "Group commit").
--
-- A view from /api/collect names the UTC day of its visitor id's salt last (`salt_day`): it is
-- dated now(), or, when now() is on another day (its id was made within the web's estimate's
-- error of midnight, or its group's INSERT came after it), at its id's day's nearest instant,
-- so an id lives on its salt's day alone (docs/ARCHITECTURE.md, "Sites and visitors"). Views
-- without one (server-side senders) are dated now(), as the column's default does: greatest()
-- and least() leave out NULLs.
INSERT INTO page_views ({{view_columns}}, viewed_at)
SELECT {{view_values}},
       least(greatest(now(), ((v->>{{view_salt_day}})::date)::timestamp AT TIME ZONE 'UTC'),
             ((v->>{{view_salt_day}})::date + 1)::timestamp AT TIME ZONE 'UTC' - interval '1 microsecond')
  FROM jsonb_array_elements(%(views)s::jsonb) AS v

-- store_events --
-- Custom events, several requests' in one statement (tally/web/collect.py has checked their
-- names and props). A prop value a (site, event, prop) has not had is kept while it has had
-- fewer than `max_values` distinct ones (migrations/0016); past that it is stored as
-- "(other)". The values of one statement, and of concurrent ones, are judged against what was
-- there before them, so the first values may pass the cap by as many as arrive together.
WITH given AS (
    -- One JSON array of [site, name, props, path, visitor, salt_day] arrays, as insert_page_views
    -- takes views; an event is dated as a view is, on the day of its visitor id's salt.
    SELECT e->>0 AS site, e->>1 AS name, e->2 AS props, e->>3 AS path, (e->>4)::bigint AS visitor,
           least(greatest(now(), ((e->>5)::date)::timestamp AT TIME ZONE 'UTC'),
                 ((e->>5)::date + 1)::timestamp AT TIME ZONE 'UTC' - interval '1 microsecond') AS occurred_at,
           position
      FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS given (e, position)
), judged AS (
    SELECT given.position, given.site, given.name, prop.key, prop.value, prop.value #>> '{}' AS text_value,
           EXISTS (SELECT FROM event_prop_values v
                    WHERE v.site = given.site AND v.name = given.name AND v.prop = prop.key
                      AND v.value = prop.value #>> '{}')
           OR (SELECT count(*) FROM (SELECT FROM event_prop_values v
                                      WHERE v.site = given.site AND v.name = given.name AND v.prop = prop.key
                                      LIMIT %(max_values)s) known) < %(max_values)s AS kept
      FROM given CROSS JOIN LATERAL jsonb_each(given.props) AS prop
), remembered AS (
    INSERT INTO event_prop_values (site, name, prop, value)
    SELECT DISTINCT site, name, key, text_value FROM judged WHERE kept
    ON CONFLICT DO NOTHING
)
INSERT INTO events (site, name, props, path, visitor, occurred_at)
SELECT given.site, given.name,
       coalesce((SELECT jsonb_object_agg(key, CASE WHEN kept THEN value ELSE '"(other)"'::jsonb END)
                   FROM judged WHERE judged.position = given.position), '{}'::jsonb),
       given.path, given.visitor, given.occurred_at
  FROM given ORDER BY given.position

-- rollup_page_views --
-- Fold every view committed since the last rollup into the rollups (migrations/0005); returns how many.
SELECT tally_rollup_page_views() AS views

-- unfolded_search_engine_domains --
-- The referring domains that may be a search engine's (`engines`, tally/search_engines.py) among
-- the views a rebuild unfolded (its transaction `own`, its days from `since`) that were stored
-- without the engine's name: before the column was, or by SQL.
SELECT DISTINCT tally_referrer_domain(referrer, site) AS domain FROM page_views
 WHERE viewed_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC' AND recorded_xid = %(own)s
   AND search_engine IS NULL AND tally_referrer_domain(referrer, site) ~* %(engines)s

-- name_unfolded_search_engines --
-- Store each engine's name (`names`, one per domain of `domains`) with those views, as the web
-- stores it with a view it collects, before the rebuild's rollup folds them again.
UPDATE page_views v SET search_engine = n.name
  FROM unnest(%(domains)s::text[], %(names)s::text[]) AS n (domain, name)
 WHERE v.viewed_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC' AND v.recorded_xid = %(own)s
   AND v.search_engine IS NULL AND tally_referrer_domain(v.referrer, v.site) = n.domain

-- unfolded_unstored_paths --
-- The paths among the views and events a rebuild unfolded (its transaction `own`, its days from
-- `since`) that are not as the web stores paths now (`to_encode`, tally/paths.py: a character a
-- browser encodes, or an escape in lower case; sent by a server, or inserted by SQL).
SELECT path FROM page_views
 WHERE viewed_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC' AND recorded_xid = %(own)s
   AND path ~ %(to_encode)s
UNION
SELECT path FROM events
 WHERE occurred_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC' AND recorded_xid = %(own)s
   AND path ~ %(to_encode)s

-- store_unfolded_paths --
-- Store each of those paths (`paths`) as the web stores it (`stored`), before the rebuild's
-- rollup folds them again; how many views and events.
WITH stored AS (
    SELECT * FROM unnest(%(paths)s::text[], %(stored)s::text[]) AS s (path, stored)
), views AS (
    UPDATE page_views v SET path = s.stored FROM stored s
     WHERE v.viewed_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC' AND v.recorded_xid = %(own)s
       AND v.path = s.path
    RETURNING 1
), events AS (
    UPDATE events e SET path = s.stored FROM stored s
     WHERE e.occurred_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC' AND e.recorded_xid = %(own)s
       AND e.path = s.path
    RETURNING 1
)
SELECT (SELECT count(*) FROM views) AS views, (SELECT count(*) FROM events) AS events

-- delete_old_rollups --
-- Drop rollups older than the cutoff day (they outlive raw views, but not forever); a day's
-- pairs of ids go with its row (migrations/0031).
WITH buckets AS (
    DELETE FROM page_view_buckets WHERE bucket < (%(cutoff_day)s::date::timestamp AT TIME ZONE 'UTC') RETURNING 1
), day_values AS (
    DELETE FROM page_view_day_values WHERE day < %(cutoff_day)s RETURNING 1
), visit_buckets AS (
    DELETE FROM page_view_visit_buckets WHERE bucket < (%(cutoff_day)s::date::timestamp AT TIME ZONE 'UTC') RETURNING 1
), crawler_hits AS (
    DELETE FROM crawler_hits_daily WHERE day < %(cutoff_day)s RETURNING 1
)
SELECT (SELECT count(*) FROM buckets) + (SELECT count(*) FROM day_values)
     + (SELECT count(*) FROM visit_buckets) + (SELECT count(*) FROM crawler_hits) AS removed

-- database_now --
-- The database's clock: the days Tally counts are its days.
SELECT now() AS now

-- rollup_state --
-- What the last rollup folded (see migrations/0004), when, the database's clock, and the span of
-- UTC days the tail's views lie in, as stats_state has it (the counts of the tail prune to it).
SELECT s.watermark, s.in_progress, s.rolled_up_at, s.last_folded, now() AS now,
       min(t.day)::timestamp AT TIME ZONE 'UTC' AS tail_from,
       (max(t.day) + 1)::timestamp AT TIME ZONE 'UTC' AS tail_to
  FROM page_view_rollup_state s
  LEFT JOIN page_view_tail_days t ON t.xid >= s.watermark OR t.xid = ANY (s.in_progress)
 GROUP BY s.watermark, s.in_progress, s.rolled_up_at, s.last_folded

-- stats_state --
-- The rollup state a stats request reads first, the database's clock and today in the zone `tz`,
-- the span of UTC days the tail's views lie in (migrations/0019; NULL when every view is
-- folded, which the tail queries read as the empty span from infinity), which the tail queries
-- prune the partitions to, and the settled days (migrations/0046).
SELECT s.watermark, s.in_progress, now() AS now, (now() AT TIME ZONE %(tz)s)::date AS today,
       min(t.day)::timestamp AT TIME ZONE 'UTC' AS tail_from,
       (max(t.day) + 1)::timestamp AT TIME ZONE 'UTC' AS tail_to,
       s.settled_before, s.settled_by
  FROM page_view_rollup_state s
  LEFT JOIN page_view_tail_days t ON t.xid >= s.watermark OR t.xid = ANY (s.in_progress)
 GROUP BY s.watermark, s.in_progress, s.settled_before, s.settled_by

-- local_midnight --
-- The instant a day starts in the zone `tz`.
SELECT %(day)s::date::timestamp AT TIME ZONE %(tz)s AS start

-- stats_tail --
-- The views not yet rolled up, by day in `tz`, with their part of the last 24 hours (`recent`:
-- 1 in its full buckets, from `recent` to `now_bucket`; 2 in the bucket it starts in, 3 in the
-- bucket of now, which stats_last_24h_edges cuts; else 0), and every dimension (the referrer as
-- its domain, parsed once per group), with how many carry a visitor id. Grouped here, not per
-- bucket: a long tail (a backfill, a stopped worker) costs the web a row per day and values,
-- not per 15 minutes. The bounds come in as values, so the planner sees how few rows lie above
-- the watermark.
SELECT day, recent, {{dimension_values}}, sum(views)::bigint AS views,
       sum(with_visitor)::bigint AS with_visitor
  FROM (SELECT (date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AT TIME ZONE %(tz)s)::date AS day,
               CASE date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00')
                    WHEN %(now_bucket)s THEN 3
                    WHEN %(recent)s::timestamptz - interval '15 minutes' THEN 2
                    ELSE CASE WHEN date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') >= %(recent)s
                                   AND date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') < %(now_bucket)s
                              THEN 1 ELSE 0 END END AS recent,
               {{dimension_inputs}}, count(*) AS views, count(visitor) AS with_visitor
          FROM page_views
         WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
           AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
       AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')
           AND (%(site)s::text IS NULL OR site = %(site)s)
         GROUP BY 1, 2, {{input_positions:3}}) tail
 GROUP BY 1, 2, {{dimension_positions:3}}

-- stats_tail_visitors --
-- How the tail's views and events move the rolled-up visitors (migrations/0020), for the whole
-- site (dim and value NULL) and per dimension value: per day in `tz`, the ids that will count
-- on it less those the rollups count (tally_visitor_moves, as the rollup calls it), of the
-- (id, UTC day)s `days` (stats_tail_days: the tail's, or those a kept answer reads again,
-- tally/web/tail_moves.py) as the snapshot `as_of` saw them (NULL: as this one does).
WITH moves AS (
    SELECT * FROM tally_visitor_moves(%(days)s::tally_visitor_of_day[], %(watermark)s, %(in_progress)s::xid8[],
                                      %(as_of)s::pg_snapshot)
)
SELECT nullif(dim, '') AS dim, CASE WHEN dim <> '' THEN value END AS value, day, sum(visitors)::bigint AS visitors
  FROM (SELECT dim, value, (bucket AT TIME ZONE %(tz)s)::date AS day,
               CASE WHEN (bucket AT TIME ZONE %(tz)s)::date = (date_trunc('day', bucket, 'UTC') AT TIME ZONE %(tz)s)::date
                    THEN firsts ELSE lasts END AS visitors
          FROM moves WHERE prev_last IS NULL
        UNION ALL
        SELECT dim, value, (bucket AT TIME ZONE %(tz)s)::date, -pairs FROM moves
         WHERE prev_last IS NOT NULL AND (prev_last AT TIME ZONE %(tz)s)::date = (bucket AT TIME ZONE %(tz)s)::date) moved
 GROUP BY 1, 2, 3
HAVING sum(visitors) <> 0

-- stats_tail_visits --
-- How the tail moves the rolled-up visits (migrations/0017): the visits of the (id, UTC day)s
-- `days` (as in stats_tail_visitors), formed again from all of their views and events (+1), and
-- as the rollups hold them (-1); per day (in `tz`) of their start, entry page and exit page.
WITH moves AS (
    SELECT (visit).*, delta
      FROM tally_visit_moves(%(days)s::tally_visitor_of_day[], %(as_of)s::pg_snapshot)
)
SELECT (date_bin('15 minutes', started_at, '2000-01-01 00:00+00') AT TIME ZONE %(tz)s)::date AS day,
       entry_path, exit_path, sum(delta)::bigint AS visits,
       coalesce(sum(delta) FILTER (WHERE views = 1 AND events = 0), 0)::bigint AS bounces,
       sum(delta * views)::bigint AS views,
       sum(delta * (extract(epoch FROM ended_at - started_at) * 1000000)::bigint)::bigint AS duration_us
  FROM moves
 GROUP BY 1, 2, 3

-- stats_tail_days --
-- The (id, UTC day)s with views or events in the tail recorded from `from_xid` on or by the
-- transactions `running` (the tail: the rollup state's watermark and in_progress; a kept
-- answer's changes: its snapshot's xmax and running ones), as an array's text, and how many:
-- whose moves stats_tail_visitors and stats_tail_visits read. Asked only when the tail has
-- visitor ids or events. Through the indexes on recorded_xid, in the tail's days: the views'
-- two conditions are two arms (the bounds below apply to each), not an OR, which the planner
-- read by the index of views with ids on viewed_at instead, every view with an id of the day
-- for a few (8.6 ms a request at 200 beacons/s, pip); and OFFSET 0 keeps the array one, not
-- one per column that names it.
SELECT days::text, cardinality(days)
  FROM (SELECT ARRAY(
            SELECT ROW(site, visitor, (viewed_at AT TIME ZONE 'UTC')::date)::tally_visitor_of_day
              FROM (SELECT site, visitor, viewed_at FROM page_views WHERE recorded_xid >= %(from_xid)s::text::xid8
                    UNION ALL
                    SELECT site, visitor, viewed_at FROM page_views
                     WHERE recorded_xid = ANY (%(running)s::text[]::xid8[])) views
             WHERE viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
               AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')
               AND visitor IS NOT NULL AND (%(site)s::text IS NULL OR site = %(site)s)
            UNION
            SELECT ROW(site, visitor, (occurred_at AT TIME ZONE 'UTC')::date)::tally_visitor_of_day
              FROM events
             WHERE (recorded_xid >= %(from_xid)s::text::xid8 OR recorded_xid = ANY (%(running)s::text[]::xid8[]))
               AND visitor IS NOT NULL AND (%(site)s::text IS NULL OR site = %(site)s)) AS days
        OFFSET 0) tail

-- stats_tail_events --
-- The tail's events per day (in `tz`) and name.
SELECT (date_bin('15 minutes', occurred_at, '2000-01-01 00:00+00') AT TIME ZONE %(tz)s)::date AS day, name,
       count(*) AS events
  FROM events
 WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
   AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1, 2

-- views_waiting --
-- How many committed views the next rollup will fold (the stats tail), read from the partitions
-- of its days (rollup_state's span) alone: planned over every partition it took 35-56 ms with a
-- year of them, on every health check.
SELECT (SELECT count(*) FROM page_views WHERE recorded_xid >= %(watermark)s
           AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
           AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity'))
     + (SELECT count(*) FROM page_views WHERE recorded_xid = ANY (%(in_progress)s::xid8[])
           AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
           AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')) AS views

-- stats_last_24h_edges --
-- What the last 24 hours need at their ends, where they cut a bucket (tally/web/windows.py,
-- Edges): the tail's views from `raw_from` to `raw_to` (the shorter part of the bucket 24 hours
-- ago, on either side of the cut; its rolled-up views are kept with the rolled-up part:
-- stats_rolled_up_edge_times), those dated after `now` in its bucket (a clock far off), and
-- the rolled-up views of those two buckets whole; and the crawler hits filtered on the UTC days
-- from first_day on. Through the index on recorded_xid: the tail's views of a bucket a day old
-- are few or none, where the bucket's own grow with the traffic (at 200 views/s, half a bucket
-- is 90,000 views).
SELECT (SELECT count(*) FROM page_views
         WHERE viewed_at >= %(raw_from)s AND viewed_at < %(raw_to)s
           AND (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
           AND (%(site)s::text IS NULL OR site = %(site)s)) AS raw,
       (SELECT count(*) FROM page_views
         WHERE viewed_at > %(now)s AND viewed_at < %(now_bucket)s::timestamptz + interval '15 minutes'
           AND (%(site)s::text IS NULL OR site = %(site)s)) AS ahead,
       (SELECT coalesce(sum(views), 0)::bigint FROM page_view_buckets
         WHERE bucket = %(first_bucket)s AND (%(site)s::text IS NULL OR site = %(site)s)) AS first_rolled_up,
       (SELECT coalesce(sum(views), 0)::bigint FROM page_view_buckets
         WHERE bucket = %(now_bucket)s AND (%(site)s::text IS NULL OR site = %(site)s)) AS now_rolled_up,
       (SELECT coalesce(sum(hits), 0)::bigint FROM crawler_hits_daily
         WHERE day >= %(first_day)s AND (%(site)s::text IS NULL OR site = %(site)s)) AS crawlers

-- stats_rolled_up_edge_times --
-- The times, in microseconds since 1970 and in order, of the rolled-up views of the bucket from
-- `first_bucket` (the one the last 24 hours begin in, which they cut): a request counts those
-- on its side of the cut from this list, kept per rollup state and site, and only the tail's
-- from page_views (stats_last_24h_edges). As the rollup state saw them: folded, not running.
SELECT (extract(epoch FROM viewed_at) * 1000000)::bigint
  FROM page_views
 WHERE viewed_at >= %(first_bucket)s AND viewed_at < %(first_bucket)s::timestamptz + interval '15 minutes'
   AND recorded_xid < %(watermark)s AND recorded_xid <> ALL (%(in_progress)s::xid8[])
   AND (%(site)s::text IS NULL OR site = %(site)s)
 ORDER BY 1

-- stats_rolled_up_days --
-- Rolled-up views per day in the zone `tz` in [since, end), and those in buckets from `recent`
-- to `now_bucket` (the full buckets of the last 24 hours).
SELECT (bucket AT TIME ZONE %(tz)s)::date AS day, sum(views)::bigint AS views,
       coalesce(sum(views) FILTER (WHERE bucket >= %(recent)s AND bucket < %(now_bucket)s), 0)::bigint AS recent
  FROM page_view_buckets
 WHERE bucket >= %(since)s AND bucket < %(end)s AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1

-- stats_rolled_up_visitors --
-- Rolled-up visitors per day (in the zone `tz`) in [start, end) (migrations/0020): the ids each
-- cell counts on its local day, less the ids of two UTC days in a row counted twice on the day
-- across the midnight between them.
SELECT day, sum(visitors)::bigint AS visitors
  FROM (SELECT c.local_day AS day, c.visitors
          FROM page_view_day_values d, tally_day_visitors(d.day, d.cells, %(tz)s, %(start)s, %(end)s) c
         WHERE d.dim = '' AND d.value = ''
           AND d.day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND d.day <= (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR d.site = %(site)s)
        UNION ALL
        SELECT o.local_day, -o.visitors
          FROM page_view_day_values d, tally_day_overlaps(d.day, d.pairs, d.pair_steps, %(tz)s, %(start)s, %(end)s) o
         WHERE d.dim = '' AND d.value = '' AND d.pair_steps <> '{}'
           AND d.day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND d.day <= (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR d.site = %(site)s)) counted
 GROUP BY 1

-- stats_rolled_up_visits --
-- Rolled-up visits per day (in the zone `tz`) of their start in [start, end): how many, of one
-- view, their views and durations (migrations/0017).
SELECT (bucket AT TIME ZONE %(tz)s)::date AS day, sum(visits)::bigint AS visits, sum(bounces)::bigint AS bounces,
       sum(views)::bigint AS views, sum(duration_us)::bigint AS duration_us
  FROM page_view_visit_buckets
 WHERE bucket >= %(start)s AND bucket < %(end)s AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1

-- stats_rolled_up_dims --
-- Rolled-up views of the most viewed values of each dimension `dims` in [start, end): whole UTC
-- days strictly between the ones `start` and `end` fall in, and those two days' cells inside the
-- window; of the rows of the UTC days in [from_day, before_day) (NULL: no bound), a window's
-- settled days or the others (migrations/0046). Per dimension the first `ranked` + 1 by views,
-- then by value in code point order (as Python sorts, tally/web/windows.py `Ranking`), or all
-- when `ranked` is NULL; and every referring domain matching `engines` besides (a search
-- engine's, summed by name in Python, may be low on its own). A dimension at a time, its top
-- rows kept by a bounded sort: a site whose paths carry ids has as many values as views, and
-- holding all of them took the web 700 MB.
SELECT d.dim, top.value, top.views, top.ranked
  FROM unnest(%(dims)s::text[]) AS d (dim)
 CROSS JOIN LATERAL (
       (SELECT counted.value, sum(counted.views)::bigint AS views, true AS ranked
          FROM (SELECT v.value, v.views FROM page_view_day_values v
                 WHERE v.dim = d.dim
                   AND v.day > (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
                   AND v.day < (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
                   AND (%(site)s::text IS NULL OR v.site = %(site)s)
                   AND v.day >= coalesce(%(from_day)s::date, '-infinity') AND v.day < coalesce(%(before_day)s::date, 'infinity')
                UNION ALL
                SELECT v.value, c.views
                  FROM page_view_day_values v, tally_cells(v.day, v.cells) c
                 WHERE v.dim = d.dim
                   AND v.day IN ((%(start)s::timestamptz AT TIME ZONE 'UTC')::date,
                                 (%(end)s::timestamptz AT TIME ZONE 'UTC')::date)
                   AND c.bucket >= %(start)s AND c.bucket < %(end)s
                   AND (%(site)s::text IS NULL OR v.site = %(site)s)
                   AND v.day >= coalesce(%(from_day)s::date, '-infinity') AND v.day < coalesce(%(before_day)s::date, 'infinity')) counted
         GROUP BY counted.value
        HAVING d.dim <> 'referrer' OR NOT (counted.value ~* %(engines)s OR counted.value = ANY (%(engine_names)s::text[]))
         ORDER BY 2 DESC, counted.value COLLATE "C"
         LIMIT %(ranked)s::integer + 1)
       UNION ALL
       SELECT counted.value, sum(counted.views)::bigint, false
         FROM (SELECT v.value, v.views FROM page_view_day_values v
                WHERE v.dim = d.dim AND d.dim = 'referrer'
                  AND (v.value ~* %(engines)s OR v.value = ANY (%(engine_names)s::text[]))
                  AND v.day > (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
                  AND v.day < (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
                  AND (%(site)s::text IS NULL OR v.site = %(site)s)
                  AND v.day >= coalesce(%(from_day)s::date, '-infinity') AND v.day < coalesce(%(before_day)s::date, 'infinity')
               UNION ALL
               SELECT v.value, c.views
                 FROM page_view_day_values v, tally_cells(v.day, v.cells) c
                WHERE v.dim = d.dim AND d.dim = 'referrer'
                  AND (v.value ~* %(engines)s OR v.value = ANY (%(engine_names)s::text[]))
                  AND v.day IN ((%(start)s::timestamptz AT TIME ZONE 'UTC')::date,
                                (%(end)s::timestamptz AT TIME ZONE 'UTC')::date)
                  AND c.bucket >= %(start)s AND c.bucket < %(end)s
                  AND (%(site)s::text IS NULL OR v.site = %(site)s)
                  AND v.day >= coalesce(%(from_day)s::date, '-infinity') AND v.day < coalesce(%(before_day)s::date, 'infinity')) counted
        GROUP BY counted.value) top

-- stats_rolled_up_wide_dims --
-- Those of `dims` with more than `most` rows of the UTC days from `from_day` to the day `end`
-- falls in (of one site, or all), each counted no further: a window's other days with more
-- values than tally/web/rolled_up.py reads whole to add to its settled days' (MERGED_VALUES).
SELECT d.dim
  FROM unnest(%(dims)s::text[]) AS d (dim)
 WHERE (SELECT count(*)
          FROM (SELECT FROM page_view_day_values v
                 WHERE v.dim = d.dim AND v.day >= %(from_day)s::date
                   AND v.day <= (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
                   AND (%(site)s::text IS NULL OR v.site = %(site)s)
                 LIMIT %(most)s::integer + 1) rows) > %(most)s::integer

-- stats_rolled_up_value_views --
-- Rolled-up views in [start, end) of some values of one dimension (as stats_rolled_up_dims counts
-- them, of the rows of the UTC days in [from_day, before_day)), those with any: a tail's values
-- the kept top rows leave out that might rank among them, or the values of a window's other
-- days to add to its settled days' (by the hundred thousand on a site whose paths carry ids:
-- one scan of the days' rows then, where a few are probed by the index).
SELECT counted.value, sum(counted.views)::bigint AS views
  FROM (SELECT v.value, v.views FROM page_view_day_values v
         WHERE v.dim = %(dim)s AND v.value = ANY (%(values)s::text[])
           AND v.day > (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND v.day < (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR v.site = %(site)s)
           AND v.day >= coalesce(%(from_day)s::date, '-infinity') AND v.day < coalesce(%(before_day)s::date, 'infinity')
        UNION ALL
        SELECT v.value, c.views
          FROM page_view_day_values v, tally_cells(v.day, v.cells) c
         WHERE v.dim = %(dim)s AND v.value = ANY (%(values)s::text[])
           AND v.day IN ((%(start)s::timestamptz AT TIME ZONE 'UTC')::date,
                         (%(end)s::timestamptz AT TIME ZONE 'UTC')::date)
           AND c.bucket >= %(start)s AND c.bucket < %(end)s
           AND (%(site)s::text IS NULL OR v.site = %(site)s)
           AND v.day >= coalesce(%(from_day)s::date, '-infinity') AND v.day < coalesce(%(before_day)s::date, 'infinity')) counted
 GROUP BY counted.value

-- stats_rolled_up_dim_visitors --
-- Rolled-up visitors per day of some dimension values (the panels' top rows), as
-- stats_rolled_up_visitors, of the rows of the UTC days in [from_day, before_day) as
-- stats_rolled_up_dims. Grouped by the values' numbers, not their text: no collation at work.
SELECT wanted.dim, wanted.value, counted.day, sum(counted.visitors)::bigint AS visitors
  FROM unnest(%(dims)s::text[], %(values)s::text[]) WITH ORDINALITY AS wanted (dim, value, n)
  JOIN LATERAL (
        SELECT c.local_day AS day, c.visitors
          FROM page_view_day_values d, tally_day_visitors(d.day, d.cells, %(tz)s, %(start)s, %(end)s) c
         WHERE d.dim = wanted.dim AND d.value = wanted.value
           AND d.day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND d.day <= (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR d.site = %(site)s)
           AND d.day >= coalesce(%(from_day)s::date, '-infinity') AND d.day < coalesce(%(before_day)s::date, 'infinity')
        UNION ALL
        SELECT o.local_day, -o.visitors
          FROM page_view_day_values d, tally_day_overlaps(d.day, d.pairs, d.pair_steps, %(tz)s, %(start)s, %(end)s) o
         WHERE d.dim = wanted.dim AND d.value = wanted.value AND d.pair_steps <> '{}'
           AND d.day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND d.day <= (%(end)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR d.site = %(site)s)
           AND d.day >= coalesce(%(from_day)s::date, '-infinity') AND d.day < coalesce(%(before_day)s::date, 'infinity')) counted ON true
 GROUP BY wanted.n, wanted.dim, wanted.value, counted.day

-- export_rolled_up_views --
-- Rolled-up views and visitors per day (in the zone `tz`) and path since `start`, as
-- stats_rolled_up_visitors; a day's rows together, the days in order (the web reads them a
-- day at a time).
SELECT day, path, sum(views)::bigint AS views, sum(visitors)::bigint AS visitors
  FROM (SELECT c.local_day AS day, d.value AS path, c.views, c.visitors
          FROM page_view_day_values d, tally_day_visitors(d.day, d.cells, %(tz)s, %(start)s, 'infinity') c
         WHERE d.dim = 'path' AND d.day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR d.site = %(site)s)
        UNION ALL
        SELECT o.local_day, d.value, 0, -o.visitors
          FROM page_view_day_values d, tally_day_overlaps(d.day, d.pairs, d.pair_steps, %(tz)s, %(start)s, 'infinity') o
         WHERE d.dim = 'path' AND d.pair_steps <> '{}' AND d.day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date
           AND (%(site)s::text IS NULL OR d.site = %(site)s)) counted
 GROUP BY 1, 2
 ORDER BY 1

-- export_tail --
-- The tail's views per day (in `tz`) and path from `start` on (its visitors per path come from
-- stats_tail_visitors).
SELECT (date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AT TIME ZONE %(tz)s)::date AS day, path,
       count(*) AS views
  FROM page_views
 WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
   AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
   AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')
   AND date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') >= %(start)s
   AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1, 2

-- sites_rolled_up --
-- Rolled-up views per site in the buckets from `since` to the bucket of now, whole (a view dated
-- later, a clock far off or a backfill's typo, is of no day of the last 30; one minutes ahead in
-- the bucket of now is, rolled up or not: sites_tail reads to the bucket's end too).
SELECT site, sum(views)::bigint AS views FROM page_view_buckets WHERE bucket >= %(since)s AND bucket <= %(now)s
 GROUP BY site

-- sites_tail --
-- The tail's views per site in the buckets from `since` to the bucket of now, whole, as
-- sites_rolled_up reads them.
SELECT site, count(*) AS views FROM page_views
 WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
   AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
   AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')
   AND date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') >= %(since)s
   AND date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') <= %(now)s
 GROUP BY site

-- count_crawler_hit --
-- One request from a crawler, counted for its site and UTC day.
INSERT INTO crawler_hits_daily (site, day, hits) VALUES (%(site)s, (now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (site, day) DO UPDATE SET hits = crawler_hits_daily.hits + 1

-- visitor_salt --
-- The salt of the database's UTC day now, made on first use (pg_strong_random, see
-- migrations/0005), with that day and the time it is of: the web dates its visitor ids by this
-- clock, the one that dates the views (tally/web/visitors.py). DO UPDATE, not DO NOTHING: when
-- another process makes the day's salt at the same moment, this waits for it and returns that
-- salt (a SELECT in the same statement would not see it: a 500).
INSERT INTO visitor_salts (day) VALUES ((now() AT TIME ZONE 'UTC')::date)
ON CONFLICT (day) DO UPDATE SET day = EXCLUDED.day
RETURNING day, salt, now() AS database_now

-- rotate_visitor_salts --
-- Make today's and tomorrow's salts ahead of use; delete every salt two days old or older.
WITH made AS (
    INSERT INTO visitor_salts (day)
    SELECT (now() AT TIME ZONE 'UTC')::date + ahead FROM generate_series(0, 1) ahead
    ON CONFLICT (day) DO NOTHING RETURNING 1
), deleted AS (
    DELETE FROM visitor_salts WHERE day <= (now() AT TIME ZONE 'UTC')::date - 2 RETURNING 1
)
SELECT (SELECT count(*) FROM made) AS made, (SELECT count(*) FROM deleted) AS deleted

-- record_job_error --
-- Keep why a job attempt failed.
INSERT INTO tally_job_errors (job_id, attempt, error, traceback, worker)
VALUES (%(job_id)s, %(attempt)s, %(error)s, %(traceback)s, %(worker)s)

-- job_abort_requested --
-- Whether the job's owner asked it to abort (procrastinate_cancel_job_v1 with abort) and it still runs.
SELECT coalesce(bool_or(abort_requested), false) AS asked
  FROM procrastinate_jobs WHERE id = %(job_id)s AND status = 'doing'

-- job_counts --
-- Jobs by task and status.
SELECT task_name, status::text AS status, count(*)::bigint AS jobs
  FROM procrastinate_jobs GROUP BY 1, 2 ORDER BY 1, 2

-- oldest_waiting_job --
-- Age in seconds of the oldest job ready to run but not started: each job waits from when it
-- last became runnable (deferred, retried, re-queued, or its scheduled time), not its first defer.
SELECT extract(epoch FROM now() - min(ready.at))::float8 AS age
  FROM procrastinate_jobs job
  CROSS JOIN LATERAL (
      SELECT greatest(max(event.at), job.scheduled_at) AS at
        FROM procrastinate_events event
       WHERE event.job_id = job.id AND event.type IN ('deferred', 'retried', 'deferred_for_retry')
  ) ready
 WHERE job.status = 'todo' AND (job.scheduled_at IS NULL OR job.scheduled_at <= now())

-- recent_failures --
-- The last failed jobs, newest first, with the error of their last attempt (see the view).
SELECT job_id AS id, task_name, attempts, queue_name, failed_at, error
  FROM tally_recent_failures
 LIMIT %(limit)s

-- job_by_id --
-- One job with its lifecycle timestamps, its last error and, if it waits, what holds it back. A
-- job waiting again (retried) shows no start, end or worker: those were its last attempt's (its
-- events list every attempt). A running or finished job shows the worker that has it or ran it last.
SELECT job.id, job.task_name AS task, job.status::text AS status, job.attempts, job.queue_name AS queue,
       job.lock, job.args, job.priority, job.scheduled_at,
       CASE WHEN job.status <> 'todo' THEN job.worker_id END AS worker_id,
       (SELECT min(at) FROM procrastinate_events WHERE job_id = job.id AND type = 'deferred') AS deferred_at,
       (SELECT max(at) FROM procrastinate_events WHERE job_id = job.id AND type = 'started'
         AND job.status <> 'todo') AS started_at,
       (SELECT max(at) FROM procrastinate_events WHERE job_id = job.id
         AND type IN ('succeeded', 'failed', 'cancelled', 'aborted')
         AND job.status NOT IN ('todo', 'doing')) AS finished_at,
       (SELECT error FROM tally_job_errors WHERE job_id = job.id ORDER BY id DESC LIMIT 1) AS last_error,
       -- Why a waiting job is not taken: procrastinate runs a lock's jobs one at a time in
       -- order (priority, then id), so the first job before it of the same lock holds it back,
       -- running, or waiting itself: scheduled later, or in a queue paused or no worker takes.
       (SELECT json_build_object('id', other.id, 'task', other.task_name, 'status', other.status,
                                 'queue', other.queue_name, 'scheduled_at', other.scheduled_at)
          FROM procrastinate_jobs other
         WHERE job.status = 'todo' AND other.lock = job.lock AND other.id <> job.id
           AND (other.status = 'doing'
                OR (other.status = 'todo' AND (other.priority > job.priority
                                               OR (other.priority = job.priority AND other.id < job.id))))
         ORDER BY other.status = 'doing' DESC, other.priority DESC, other.id
         LIMIT 1) AS waits_behind,
       job.status = 'todo' AND EXISTS (SELECT FROM tally_paused_queues paused WHERE paused.queue_name = job.queue_name)
           AS queue_paused
  FROM procrastinate_jobs job
 WHERE job.id = %(job_id)s

-- retry_stalled_job --
-- Re-queue a stalled job only if it is still running under the worker it was found stalled with:
-- another retry may have re-queued it, and a live worker may already have picked it up again.
-- A job someone asked to abort ends `aborted` instead: its worker died before it could (procrastinate's
-- retry would end it `failed`, with no error, and count as a re-queue).
-- procrastinate's retry is an UPDATE, which wakes no worker (its NOTIFY fires on INSERT): the
-- job waited for a worker's next poll. It sends the NOTIFY of a job inserted, at commit.
WITH still_stalled AS (
    SELECT id, queue_name, abort_requested, json_build_object('type', 'job_inserted', 'job_id', id)::text AS wake
      FROM procrastinate_jobs
     WHERE id = %(job_id)s AND status = 'doing' AND worker_id IS NOT DISTINCT FROM %(worker_id)s
       FOR UPDATE
)
SELECT count(procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL)) FILTER (WHERE NOT abort_requested) AS retried,
       count(procrastinate_finish_job_v1(id, 'aborted', false)) FILTER (WHERE abort_requested) AS aborted,
       count(pg_notify('procrastinate_queue_v1#' || queue_name, wake)) FILTER (WHERE NOT abort_requested) AS woke,
       count(pg_notify('procrastinate_any_queue_v1', wake)) FILTER (WHERE NOT abort_requested) AS woke_any
  FROM still_stalled

-- page_views_total --
-- Every view ever recorded that is still counted: the rollups plus the tail (from the partitions
-- of its days, as views_waiting).
SELECT (SELECT coalesce(sum(views), 0) FROM page_view_buckets)
     + (SELECT count(*) FROM page_views
         WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
           AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
           AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')) AS views

-- hold_worker_session --
-- Take the worker's session lock and say so (one transaction: the row is never seen without the
-- lock). Taken again on a new session (the old one ended), the lock is no longer lost. A worker
-- whose row the sweep deleted (taken for dead) fails here on the row's foreign key.
WITH locked AS (SELECT pg_advisory_lock(7245, %(worker_id)s::int))
INSERT INTO tally_worker_sessions (worker_id) SELECT %(worker_id)s FROM locked
ON CONFLICT (worker_id) DO UPDATE SET lost_since = NULL

-- note_lost_sessions --
-- When each worker's session lock was first seen free; forgotten once someone holds it again.
UPDATE tally_worker_sessions session
   SET lost_since = CASE WHEN session.lost_since IS NULL THEN now() END
 WHERE (session.lost_since IS NULL) = NOT EXISTS (
       SELECT 1 FROM tally_worker_locks lock WHERE lock.worker_id = session.worker_id)

-- jobs_of_lost_sessions --
-- Running jobs of workers whose session lock nobody has held for `grace` seconds: those workers
-- are dead (a live one whose session ended takes its lock again within a second or two).
SELECT job.id AS job_id, job.worker_id, job.task_name
  FROM procrastinate_jobs job
  JOIN tally_worker_sessions session ON session.worker_id = job.worker_id
 WHERE job.status = 'doing'
   AND session.lost_since < now() - make_interval(secs => %(grace)s)
   AND NOT EXISTS (SELECT 1 FROM tally_worker_locks lock WHERE lock.worker_id = job.worker_id)
UNION ALL
-- And running jobs whose worker is gone: it stopped (a database restart) after its write of the
-- job's outcome failed, and procrastinate's unregister set the job's worker_id to NULL. The
-- heartbeat rule alone found those, at the clock's next minute.
SELECT job.id AS job_id, job.worker_id, job.task_name
  FROM procrastinate_jobs job
 WHERE job.status = 'doing' AND job.worker_id IS NULL

-- delete_lost_session_workers --
-- Forget the workers whose session lock nobody has held for `grace` seconds, once no job of
-- theirs is running (a job whose worker is forgotten would lose its worker_id, and with it the
-- way to find it stalled).
WITH lost AS (
    DELETE FROM procrastinate_workers worker
     USING tally_worker_sessions session
     WHERE session.worker_id = worker.id
       AND session.lost_since < now() - make_interval(secs => %(grace)s)
       AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs job WHERE job.worker_id = worker.id AND job.status = 'doing')
       AND NOT EXISTS (SELECT 1 FROM tally_worker_locks lock WHERE lock.worker_id = worker.id)
    RETURNING 1
)
SELECT count(*) AS removed FROM lost

-- migrations_table --
-- Whether the release step ever ran here: it makes tally_migrations first.
SELECT to_regclass('tally_migrations') IS NOT NULL AS present

-- missing_migrations --
-- Which of this release's migrations (`names`) the database has not applied, in their order.
SELECT shipped.name
  FROM unnest(%(names)s::text[]) WITH ORDINALITY AS shipped (name, position)
 WHERE NOT EXISTS (SELECT 1 FROM tally_migrations applied WHERE applied.name = shipped.name)
 ORDER BY shipped.position

-- stalled_jobs_by_heartbeat --
-- procrastinate's select_stalled_jobs_by_heartbeat (3.10), for the workers without a session lock
-- only (the CLI's; WORKER_SESSION_LIVENESS=false). The session sweep judges the others
-- (jobs/liveness.py): a worker frozen past STALLED_AFTER_SECONDS keeps its session, and the
-- heartbeat rule re-queued its job and pruned its row while it lived; resumed, it ran the job
-- beside the new attempt, with nothing to tell it (end_sessions_of_silent_workers below).
WITH stalled_workers AS (
   SELECT id
     FROM procrastinate_workers worker
    WHERE last_heartbeat < NOW() - (%(seconds_since_heartbeat)s || ' SECOND')::INTERVAL
      AND NOT EXISTS (SELECT 1 FROM tally_worker_sessions session WHERE session.worker_id = worker.id)
)
SELECT job.id, status, task_name, priority, lock, queueing_lock,
       args, scheduled_at, queue_name, attempts, job.worker_id
  FROM procrastinate_jobs job
  LEFT JOIN stalled_workers sw ON sw.id = job.worker_id
 WHERE job.status = 'doing'
   AND (%(queue)s::varchar IS NULL OR job.queue_name = %(queue)s)
   AND (%(task_name)s::varchar IS NULL OR job.task_name = %(task_name)s)
   AND (job.worker_id IS NULL OR sw.id IS NOT NULL)

-- prune_stalled_workers --
-- procrastinate's prune_stalled_workers, for the workers without a session lock (see above): the
-- sweep forgets the others once their lock has stayed free (delete_lost_session_workers).
DELETE FROM procrastinate_workers worker
 WHERE last_heartbeat < NOW() - (%(seconds_since_heartbeat)s || ' SECOND')::INTERVAL
   AND NOT EXISTS (SELECT 1 FROM tally_worker_sessions session WHERE session.worker_id = worker.id)
RETURNING worker.id AS worker_id

-- end_sessions_of_silent_workers --
-- End the session-lock sessions of workers silent for `seconds` (frozen: SIGSTOP, a paused VM, a
-- stuck loop; the server keeps their sessions): the session sweep then judges them like any
-- worker whose lock is free (grace, re-queue, and `TakenForDead` should one come back), so their
-- jobs run again within seconds, and one that resumes within the grace takes its lock back and
-- goes on, its job not re-queued. The heartbeat rule above passes them over.
SELECT count(pg_terminate_backend(lock.pid)) AS ended
  FROM procrastinate_workers worker
  JOIN tally_worker_locks lock ON lock.worker_id = worker.id
 WHERE worker.last_heartbeat < NOW() - make_interval(secs => %(seconds)s)

-- local_lock_timeout --
-- Bound this transaction's waits for locks (milliseconds), whatever the session's setting.
SELECT set_config('lock_timeout', %(milliseconds)s || 'ms', true)

-- fetch_job --
-- procrastinate's fetch_job (3.10) through Tally's copy of its function, which skips paused queues.
SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, attempts, worker_id
    FROM tally_fetch_job_v1(%(queues)s::varchar[], %(worker_id)s);

-- pause_queue --
-- Pause a queue (a second pause keeps the first time); the answer is when it was paused.
WITH paused AS (
    INSERT INTO tally_paused_queues (queue_name) VALUES (%(queue)s)
    ON CONFLICT (queue_name) DO NOTHING
    RETURNING paused_at
)
SELECT paused_at FROM paused
UNION ALL
SELECT paused_at FROM tally_paused_queues WHERE queue_name = %(queue)s
LIMIT 1

-- resume_queue --
-- Resume a queue and wake every worker as a new job of it would (procrastinate's channels and payload).
WITH resumed AS (
    DELETE FROM tally_paused_queues WHERE queue_name = %(queue)s RETURNING queue_name
)
SELECT count(*) AS resumed,
       count(pg_notify('procrastinate_queue_v1#' || queue_name, '{"type": "job_inserted"}')),
       count(pg_notify('procrastinate_any_queue_v1', '{"type": "job_inserted"}'))
  FROM resumed

-- paused_queues --
-- The paused queues, oldest pause first.
SELECT queue_name AS queue, paused_at FROM tally_paused_queues ORDER BY paused_at, queue_name

-- retry_job --
-- Queue a failed, cancelled or aborted job again, at once, and wake the workers as a new job would.
-- `attempts` stays: procrastinate counted the failed attempt when it finished (its own
-- procrastinate_retry_job_v2 would count a failed job's last attempt a second time).
WITH target AS (
    SELECT id, status FROM procrastinate_jobs
     WHERE id = %(job_id)s AND status IN ('failed', 'cancelled', 'aborted')
       FOR UPDATE
), retried AS (
    UPDATE procrastinate_jobs job
       SET status = 'todo', scheduled_at = NULL, abort_requested = false, worker_id = NULL
      FROM target
     WHERE job.id = target.id
 RETURNING job.id, job.queue_name, target.status::text AS was
), cancelled_event AS (
    -- procrastinate's trigger records failed -> todo as 'retried'; cancelled or aborted -> todo it leaves out.
    INSERT INTO procrastinate_events (job_id, type)
    SELECT id, 'retried' FROM retried WHERE was IN ('cancelled', 'aborted')
)
SELECT id, was,
       pg_notify('procrastinate_queue_v1#' || queue_name, json_build_object('type', 'job_inserted', 'job_id', id)::text),
       pg_notify('procrastinate_any_queue_v1', json_build_object('type', 'job_inserted', 'job_id', id)::text)
  FROM retried

-- waiting_job_of_same_queueing_lock --
-- The job waiting with the queueing lock of job `job_id` (procrastinate allows one at a time).
SELECT waiting.id FROM procrastinate_jobs job
  JOIN procrastinate_jobs waiting ON waiting.queueing_lock = job.queueing_lock AND waiting.status = 'todo'
 WHERE job.id = %(job_id)s

-- retry_jobs_matching --
-- Queue again up to `limit` failed, cancelled or aborted jobs of a filter, newest first; wake the workers once.
-- procrastinate lets one job of a queueing lock wait at a time: of those, only the newest is
-- retried, and none while another job of that lock waits.
WITH candidate AS (
    SELECT id, status, queueing_lock FROM procrastinate_jobs
     WHERE status IN ('failed', 'cancelled', 'aborted')
       AND (%(status)s::procrastinate_job_status IS NULL OR status = %(status)s)
       AND (%(task)s::varchar IS NULL OR task_name = %(task)s)
       AND (%(queue)s::varchar IS NULL OR queue_name = %(queue)s)
     ORDER BY id DESC LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), target AS (
    SELECT DISTINCT ON (queueing_lock, CASE WHEN queueing_lock IS NULL THEN id END) id, status
      FROM candidate
     WHERE queueing_lock IS NULL
        OR NOT EXISTS (SELECT 1 FROM procrastinate_jobs waiting
                        WHERE waiting.queueing_lock = candidate.queueing_lock AND waiting.status = 'todo')
     ORDER BY queueing_lock, CASE WHEN queueing_lock IS NULL THEN id END, id DESC
), retried AS (
    UPDATE procrastinate_jobs job
       SET status = 'todo', scheduled_at = NULL, abort_requested = false, worker_id = NULL
      FROM target
     WHERE job.id = target.id
 RETURNING job.id, job.queue_name, target.status::text AS was
), cancelled_event AS (
    INSERT INTO procrastinate_events (job_id, type)
    SELECT id, 'retried' FROM retried WHERE was IN ('cancelled', 'aborted')
), queues AS (
    SELECT DISTINCT queue_name FROM retried
)
SELECT (SELECT count(*) FROM retried) AS retried,
       (SELECT count(pg_notify('procrastinate_queue_v1#' || queue_name, '{"type": "job_inserted"}')) FROM queues),
       (SELECT count(pg_notify('procrastinate_any_queue_v1', '{"type": "job_inserted"}')) FROM queues)

-- cancel_jobs_matching --
-- Cancel up to `limit` waiting jobs of a filter (and ask running ones to abort), newest first,
-- through procrastinate's own cancel function.
SELECT count(procrastinate_cancel_job_v1(id, true, false)) AS cancelled
  FROM (
    SELECT id FROM procrastinate_jobs
     WHERE status IN ('todo', 'doing')
       AND (%(status)s::procrastinate_job_status IS NULL OR status = %(status)s)
       AND (%(task)s::varchar IS NULL OR task_name = %(task)s)
       AND (%(queue)s::varchar IS NULL OR queue_name = %(queue)s)
     ORDER BY id DESC LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
  ) matching

-- list_jobs --
-- One page of jobs, newest first, after the id `before` (keyset: no OFFSET), by status, task and queue.
SELECT job.id, job.task_name AS task, job.status::text AS status, job.queue_name AS queue, job.attempts,
       job.scheduled_at, job.worker_id, job.abort_requested, last.type AS last_event, last.at AS last_event_at
  FROM procrastinate_jobs job
  LEFT JOIN LATERAL (
      SELECT type::text AS type, at FROM procrastinate_events WHERE job_id = job.id ORDER BY id DESC LIMIT 1
  ) last ON true
 WHERE (%(status)s::procrastinate_job_status IS NULL OR job.status = %(status)s)
   AND (%(task)s::varchar IS NULL OR job.task_name = %(task)s)
   AND (%(queue)s::varchar IS NULL OR job.queue_name = %(queue)s)
   AND (%(before)s::bigint IS NULL OR job.id < %(before)s)
 ORDER BY job.id DESC
 LIMIT %(limit)s

-- job_task_names --
-- Every task name in procrastinate_jobs, one index probe each (a loose index scan, not a scan of every job).
WITH RECURSIVE names AS (
    (SELECT task_name FROM procrastinate_jobs ORDER BY task_name LIMIT 1)
    UNION ALL
    SELECT (SELECT task_name FROM procrastinate_jobs WHERE task_name > names.task_name ORDER BY task_name LIMIT 1)
      FROM names WHERE names.task_name IS NOT NULL
)
SELECT task_name AS name FROM names WHERE task_name IS NOT NULL

-- job_queue_names --
-- Every queue name in procrastinate_jobs, one index probe each (a loose index scan).
WITH RECURSIVE names AS (
    (SELECT queue_name FROM procrastinate_jobs ORDER BY queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT queue_name FROM procrastinate_jobs WHERE queue_name > names.queue_name ORDER BY queue_name LIMIT 1)
      FROM names WHERE names.queue_name IS NOT NULL
)
SELECT queue_name AS name FROM names WHERE queue_name IS NOT NULL

-- job_events --
-- Every event of a job, oldest first.
SELECT type::text AS type, at FROM procrastinate_events WHERE job_id = %(job_id)s ORDER BY at, id

-- job_errors --
-- Every recorded error of a job, newest first, with its traceback.
SELECT attempt, error, traceback, worker, failed_at FROM tally_job_errors WHERE job_id = %(job_id)s ORDER BY id DESC

-- last_report_period --
-- The latest period of a kind any report was claimed for, and the earliest with a report left
-- unsent ('sending': killed mid-send; 'retrying': a temporary failure): weekly names are
-- 2026-W48, monthly 2026-11 (both sort as their periods), NULL when there is none.
SELECT max(period) AS period, min(period) FILTER (WHERE status IN ('sending', 'retrying')) AS unfinished
  FROM tally_report_deliveries
 WHERE (position('-W' IN period) > 0) = (%(kind)s = 'weekly')

-- last_periodic_defers --
-- The last deferral of each periodic task named, with its job's status. Not a tick dated over a
-- minute ahead of the database's clock (a clock whose system time ran ahead): a clock started
-- after it resumed from there, and deferred nothing until that time came (a day, for one a day
-- ahead: no rollup, cleanup or salt rotation).
SELECT DISTINCT ON (defer.task_name)
       defer.task_name AS task, defer.defer_timestamp, defer.job_id, job.status::text AS status
  FROM procrastinate_periodic_defers defer
  LEFT JOIN procrastinate_jobs job ON job.id = defer.job_id
 WHERE defer.task_name = ANY (%(tasks)s)
   AND defer.defer_timestamp <= extract(epoch FROM now()) + 60
 ORDER BY defer.task_name, defer.defer_timestamp DESC NULLS LAST, defer.id DESC

-- last_jobs_of_tasks --
-- Each task's newest job, whoever deferred it (the clock, "Run now", the CLI, a stats request),
-- with the time of its last event: one probe of (task_name, id) each. The probe is the last row
-- up to (task, the largest id), its task compared after: written `task_name = t.task ORDER BY
-- id DESC`, the planner walked the primary key backwards instead, expecting a task's job every
-- few rows, and for a task with none (send_reports with reports off) read every job: 0.5 s a
-- jobs page with a million (bench/jobs_page.py; 0.3 ms now).
SELECT t.task, job.id AS job_id, job.status::text AS status,
       (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = job.id) AS at
  FROM unnest(%(tasks)s::text[]) AS t(task)
  JOIN LATERAL (SELECT j.id, j.status, j.task_name FROM procrastinate_jobs j
                 WHERE (j.task_name, j.id) <= (t.task, 9223372036854775807)
                 ORDER BY j.task_name DESC, j.id DESC LIMIT 1) job ON job.task_name = t.task

-- set_local_work_mem --
-- The memory of each sort and hash for the rest of this transaction (SET LOCAL, with a value).
SELECT set_config('work_mem', %(work_mem)s, true)

-- set_local_planner --
-- The planner's settings for a read of a few ids' views (tally/web/filtered.py, planned_for_few_ids),
-- for the rest of this transaction (SET LOCAL, with values): parallel workers a statement may
-- start, nested loops, JIT; and what they were before (the select list is evaluated in order).
SELECT current_setting('max_parallel_workers_per_gather') AS workers, current_setting('enable_nestloop') AS nestloop,
       current_setting('jit') AS jit,
       set_config('max_parallel_workers_per_gather', %(workers)s, true), set_config('enable_nestloop', %(nestloop)s, true),
       set_config('jit', %(jit)s, true)

-- filtered_answer --
-- Everything a filtered answer counts (migrations/0014), from one scan of the views matching every
-- given filter (NULL: no filter on that dimension), in [start, end) but for the visits, which
-- read the UTC days `start` and `end` fall in, [utc_from, utc_until) (a visit never crosses a UTC
-- midnight, but may a local one; values, not date_trunc(..., 'UTC'), which PostgreSQL 15 holds
-- STABLE, plus an interval, STABLE on all: 15 planned every day partition, 87 ms with a year of
-- them, and pruned them as it ran). Goals alone (`goals_only`: `event` or `goal_path` and no
-- filter on a view's own values) narrow the answer to the visitors who reached them in [start, end), and it is theirs as
-- an unfiltered answer is everyone's: their events count as their views do, so an id that sent
-- the event and no view (a server's Purchase) is one of the day's visitors with its visit of
-- events, and the event's row is the unfiltered one. A filter on a view's values (an event has
-- none of them, but its page) counts the ids on the days they have a matching view. One row per:
-- - 'day': a day in `tz`; its views and distinct visitors (of a matching view, or with
--   `goals_only` of anything they sent);
-- - 'value' (with `panels`): a dimension (name) and value (detail); its views, and each day's
--   distinct visitors, summed;
-- - 'visits': a day of their start, entry page (name), exit page (detail); visits, bounces,
--   views, and their durations summed in microseconds, as stats_tail_visits lists them: the
--   visits that hold a matching view (with `goals_only`, every visit of the goals' visitors),
--   formed of the matching views and their visitors' events;
-- - 'event' (with `panels`): an event name of the answer's visitors; its events and each day's
--   distinct visitors, summed, of the days they count among the answer's visitors (a send on
--   another local day counted a visitor the answer had not);
-- - 'prop' (with `panels` and `event`): a prop (name) and value (detail) of those visitors' sends
--   of the event `event`; how many, and their visitors as the event's.
-- - 'bucket' (with `buckets`): a 15-minute bucket (its number since 1970) of the views read, in
--   the window or not; how many: the last 24 hours' full buckets (filtered_recent_edges).
-- Filters read raw views, so they reach back RETENTION_DAYS. Carried forward (tally/web/carried.py),
-- the answer is counted over the views and events of some ids only (of_sites, of_visitors), as
-- an earlier snapshot saw them (as_of), or of the views without an id recorded after one
-- (anonymous_from and anonymous_running: its xmax and running transactions); all NULL, over
-- everything this snapshot sees. With `chunks`, over the
-- ids whose number is `chunk` modulo `chunks` (the views without one in chunk 0): a large slice
-- counted in parts that each end within the web's statement timeout, and add up to the whole.
WITH matching AS MATERIALIZED (
    SELECT site, visitor, viewed_at, id, {{dimension_values}}, (viewed_at AT TIME ZONE %(tz)s)::date AS day,
           viewed_at >= %(start)s AND viewed_at < %(end)s AS inside
      FROM tally_views_matching(%(utc_from)s, %(utc_until)s, %(site)s, {{filter_arguments}},
           %(event)s, %(goal_path)s, %(start)s, %(end)s,  -- goals reached in the window itself
           %(of_sites)s::text[], %(of_visitors)s::bigint[], %(as_of)s::pg_snapshot,
           %(anonymous_from)s::text::xid8, %(anonymous_running)s::text[]::xid8[])
     WHERE %(chunks)s::integer IS NULL  -- one chunk of the ids (and views without one: the first)
        OR CASE WHEN visitor IS NULL THEN %(chunk)s = 0 ELSE abs(visitor %% %(chunks)s) = %(chunk)s END
), senders AS MATERIALIZED (
    -- The ids whose events the answer reads: those of the matching views, and with `goals_only`
    -- and no `goal_path` every sender of `event` in the window (with `goal_path`, each viewed it).
    SELECT site, visitor FROM matching WHERE visitor IS NOT NULL
    UNION
    SELECT e.site, e.visitor
      FROM (SELECT * FROM events WHERE %(of_visitors)s::bigint[] IS NULL
            UNION ALL  -- a few ids: their events through the index of a sender's, a probe an id
            SELECT e.* FROM unnest(%(of_sites)s::text[], %(of_visitors)s::bigint[]) AS i (site, visitor)
             CROSS JOIN LATERAL (SELECT * FROM events e
                                  WHERE e.site = i.site AND e.visitor = i.visitor AND e.name = %(event)s
                                    AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s OFFSET 0) e) e
     WHERE %(goals_only)s AND %(goal_path)s::text IS NULL AND e.name = %(event)s
       AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
       AND e.visitor IS NOT NULL AND (%(site)s::text IS NULL OR e.site = %(site)s)
       AND (%(as_of)s::pg_snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, %(as_of)s::pg_snapshot))
       AND (%(chunks)s::integer IS NULL OR abs(e.visitor %% %(chunks)s) = %(chunk)s)
), sent AS MATERIALIZED (
    -- Narrowed to a few ids, their events through the index of a sender's events; else the
    -- window's events, joined to the senders at once.
    SELECT e.site, e.visitor, e.id, e.name, e.props, e.path, e.occurred_at,
           (e.occurred_at AT TIME ZONE %(tz)s)::date AS day,
           e.occurred_at >= %(start)s AND e.occurred_at < %(end)s AS inside
      FROM (SELECT * FROM events WHERE %(of_visitors)s::bigint[] IS NULL
            UNION ALL
            SELECT e.* FROM unnest(%(of_sites)s::text[], %(of_visitors)s::bigint[]) AS i (site, visitor)
             CROSS JOIN LATERAL (SELECT * FROM events e
                                  WHERE e.site = i.site AND e.visitor = i.visitor
                                    AND e.occurred_at >= %(utc_from)s AND e.occurred_at < %(utc_until)s OFFSET 0) e) e
     WHERE e.occurred_at >= %(utc_from)s AND e.occurred_at < %(utc_until)s
       AND (%(site)s::text IS NULL OR e.site = %(site)s)
       AND (e.site, e.visitor) IN (SELECT site, visitor FROM senders)
       AND (%(as_of)s::pg_snapshot IS NULL OR pg_visible_in_snapshot(e.recorded_xid, %(as_of)s::pg_snapshot))
), visitor_days AS MATERIALIZED (
    SELECT site, visitor, day FROM matching WHERE inside AND visitor IS NOT NULL
    UNION
    SELECT site, visitor, day FROM sent WHERE %(goals_only)s AND inside
), visits AS (
    -- The matching views' visits, formed with the events of their visitors as every visit is
    -- (an event keeps a one-view visit from bouncing, and lengthens it); a visit without a
    -- matching view (only events) is left out below, but with `goals_only`.
    SELECT (visit).*
      FROM tally_visits_of(ARRAY(
               SELECT ROW(site, visitor, viewed_at, id, path, false)::tally_visit_view
                 FROM matching WHERE visitor IS NOT NULL
               UNION ALL
               SELECT ROW(site, visitor, occurred_at, id, path, true)::tally_visit_view FROM sent))
)
SELECT 'day' AS part, day, NULL::text AS name, NULL::text AS detail, sum(views)::bigint AS n1,
       count(visitor) AS n2, NULL::bigint AS n3, NULL::bigint AS n4
  FROM (SELECT day, site, visitor, sum(views) AS views  -- an id counts once a day per site, as rolled up
          FROM (SELECT day, site, visitor, 1 AS views FROM matching WHERE inside
                UNION ALL
                SELECT day, site, visitor, 0 FROM visitor_days) seen
         GROUP BY day, site, visitor) per_visitor_day
 GROUP BY day
UNION ALL
SELECT 'value', NULL, dim, value, sum(views)::bigint, count(visitor), NULL, NULL
  FROM (SELECT dims.dim, dims.value, day, site, visitor, count(*) AS views
          FROM matching
         CROSS JOIN LATERAL (VALUES {{dimension_pairs}}) AS dims (dim, value)
         WHERE %(panels)s AND inside AND dims.value IS NOT NULL
         GROUP BY 1, 2, 3, 4, 5) per_visitor_day
 GROUP BY dim, value
UNION ALL
SELECT 'visits', (date_bin('15 minutes', started_at, '2000-01-01 00:00+00') AT TIME ZONE %(tz)s)::date,
       entry_path, exit_path, count(*), count(*) FILTER (WHERE views = 1 AND events = 0),
       sum(views)::bigint, sum((extract(epoch FROM ended_at - started_at) * 1000000)::bigint)::bigint
  FROM visits
 WHERE started_at >= %(start)s AND started_at < %(end)s AND (views > 0 OR %(goals_only)s)
 GROUP BY 2, 3, 4
UNION ALL
SELECT 'event', NULL, e.name, NULL, count(*),
       count(DISTINCT (d.day, d.site, d.visitor)) FILTER (WHERE d.visitor IS NOT NULL), NULL, NULL
  FROM sent e
  LEFT JOIN visitor_days d ON d.site = e.site AND d.visitor = e.visitor AND d.day = e.day
 WHERE %(panels)s AND e.inside AND (e.site, e.visitor) IN (SELECT site, visitor FROM visitor_days)
 GROUP BY e.name
UNION ALL
SELECT 'prop', NULL, prop.key, prop.value #>> '{}', count(*),
       count(DISTINCT (d.day, d.site, d.visitor)) FILTER (WHERE d.visitor IS NOT NULL), NULL, NULL
  FROM sent e
 CROSS JOIN LATERAL jsonb_each(e.props) AS prop
  LEFT JOIN visitor_days d ON d.site = e.site AND d.visitor = e.visitor AND d.day = e.day
 WHERE %(panels)s AND e.name = %(event)s AND e.inside
   AND (e.site, e.visitor) IN (SELECT site, visitor FROM visitor_days)
 GROUP BY 3, 4
UNION ALL
SELECT 'bucket', NULL, NULL, NULL, (extract(epoch FROM date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00')) / 900)::bigint,
       count(*), NULL, NULL
  FROM matching
 WHERE %(buckets)s
 GROUP BY 5

-- filtered_recent_edges --
-- What the buckets of a filtered answer (filtered_answer's 'bucket' rows) leave out of the last 24
-- hours and of the last 5 minutes: the matching views from `since` (24 hours before `now`) to the
-- first full bucket after it, and from the bucket of `now` to `now`; and the distinct visitors of
-- the 5 minutes to `now`. Under goals, the views of the ids of those minutes that reached them in
-- the answer's window (of_sites, of_visitors: recent_edge_ids, then goal_reached_ids), with no
-- goal of its own (`event` and `goal_path` NULL); without goals those two are NULL.
SELECT count(*) FILTER (WHERE viewed_at < %(first_full_bucket)s OR viewed_at >= %(now_bucket)s) AS views,
       count(DISTINCT (site, visitor)) FILTER (WHERE viewed_at >= %(five_minutes_ago)s AND visitor IS NOT NULL)
           AS current_visitors
  FROM (SELECT * FROM tally_views_matching(%(since)s::timestamptz, %(first_full_bucket)s::timestamptz, %(site)s,
                                           {{filter_arguments}}, %(event)s, %(goal_path)s,
                                           %(goals_from)s::timestamptz, %(goals_until)s::timestamptz,
                                           %(of_sites)s::text[], %(of_visitors)s::bigint[], NULL, NULL, NULL)
        UNION ALL
        SELECT * FROM tally_views_matching(least(%(now_bucket)s::timestamptz, %(five_minutes_ago)s::timestamptz),
                                           'infinity', %(site)s, {{filter_arguments}}, %(event)s, %(goal_path)s,
                                           %(goals_from)s::timestamptz, %(goals_until)s::timestamptz,
                                           %(of_sites)s::text[], %(of_visitors)s::bigint[], NULL, NULL, NULL)) edges
 WHERE viewed_at <= %(now)s

-- recent_edge_ids --
-- The ids with views in the minutes filtered_recent_edges reads (a goal is reached by an id: views
-- without one never count under a goal).
SELECT DISTINCT site, visitor FROM page_views
 WHERE visitor IS NOT NULL AND (%(site)s::text IS NULL OR site = %(site)s)
   AND ((viewed_at >= %(since)s AND viewed_at < %(first_full_bucket)s)
        OR (viewed_at >= least(%(now_bucket)s::timestamptz, %(five_minutes_ago)s::timestamptz) AND viewed_at <= %(now)s))

-- goal_reached_ids --
-- Of the ids given (of_sites, of_visitors), those that reached the goals in [goals_from,
-- goals_until): sent the event `event`, viewed `goal_path`, both when both are named, as
-- tally_views_matching's goal filters find them. An index probe per id (a day partition's each),
-- or the goal's senders hashed once where that costs less: the ids are counted, so the planner
-- knows which (a join of the ids to their views, estimated at a row or two, was nested over the
-- goal's senders and read them again for each view: docs/ARCHITECTURE.md, "Plans and JIT").
SELECT i.site, i.visitor
  FROM unnest(%(of_sites)s::text[], %(of_visitors)s::bigint[]) AS i (site, visitor)
 WHERE (%(event)s::text IS NULL OR EXISTS (
           SELECT 1 FROM events g
            WHERE g.site = i.site AND g.visitor = i.visitor AND g.name = %(event)s
              AND g.occurred_at >= %(goals_from)s AND g.occurred_at < %(goals_until)s))
   AND (%(goal_path)s::text IS NULL OR EXISTS (
           SELECT 1 FROM page_views g
            WHERE g.site = i.site AND g.visitor = i.visitor AND g.path = %(goal_path)s
              AND g.viewed_at >= %(goals_from)s AND g.viewed_at < %(goals_until)s))

-- filtered_views_bound --
-- What the rollups know of the values a filtered answer names, over the UTC days [from_day,
-- to_day): per (dim, value) of `dims` and `values`, and of the site itself ('', ''), its views
-- and its ids' days (the ids whose first view, or event, of a UTC day it holds): how many views
-- the answer can count at most (tally/web/filtered.py, views_bound). The site's own pair is one
-- of the list, not an OR beside it: with the OR every day row of the window was read (70-340 ms
-- for a first count at 1M views); without, the index on (dim, value, day) a pair at a time.
SELECT dim, value, sum(views)::bigint AS views, coalesce(sum(firsts), 0)::bigint AS id_days
  FROM page_view_day_values d
 CROSS JOIN LATERAL (SELECT sum(first) AS firsts FROM unnest(d.cells[:][3:3]) AS first) c
 WHERE day >= %(from_day)s AND day < %(to_day)s AND (%(site)s::text IS NULL OR site = %(site)s)
   AND (dim, value) IN (SELECT * FROM unnest(%(dims)s::text[] || ''::text, %(values)s::text[] || ''::text))
 GROUP BY dim, value

-- filtered_snapshot --
-- This transaction's snapshot (as text: xmin:xmax:in-progress,...) and how many statements have
-- changed or removed raw views and events (migrations/0033): what a filtered answer is kept with;
-- and whether this is a standby, whose snapshots list no transaction in progress (PostgreSQL
-- keeps a standby's in another array, which pg_current_snapshot() does not show).
SELECT pg_current_snapshot()::text AS snapshot, (SELECT changes FROM tally_raw_changes) AS changes,
       pg_is_in_recovery() AS standby

-- export_snapshot --
-- This transaction's snapshot, for another connection to count in too (SET TRANSACTION SNAPSHOT):
-- half the chunks of a large filtered answer (tally/web/shared_snapshot.py).
SELECT pg_export_snapshot()

-- filtered_changed_ids --
-- The ids with views or events in [start, end) recorded since the snapshot `since` (xids at or
-- past its xmax, or in progress then), one row each, and (site, NULL) where views without an id
-- were: what a kept filtered answer must count again. Through the indexes on recorded_xid.
SELECT DISTINCT site, visitor
  FROM (SELECT site, visitor FROM page_views
         WHERE viewed_at >= %(start)s AND viewed_at < %(end)s AND (%(site)s::text IS NULL OR site = %(site)s)
           AND (recorded_xid >= %(since_xmax)s::text::xid8 OR recorded_xid = ANY (%(since_xip)s::text[]::xid8[]))
        UNION ALL
        SELECT site, visitor FROM events
         WHERE occurred_at >= %(start)s AND occurred_at < %(end)s AND (%(site)s::text IS NULL OR site = %(site)s)
           AND visitor IS NOT NULL
           AND (recorded_xid >= %(since_xmax)s::text::xid8 OR recorded_xid = ANY (%(since_xip)s::text[]::xid8[]))) changed

-- current_visitors --
-- Distinct visitors of the 5 minutes to `now`, of one site or all: the ids that sent a view or
-- an event, as `visitors` counts them (migrations/0023). Through the partial index of the views
-- with a visitor id (migrations/0013), so views without one are never read. The times come as
-- values (not now() - interval, which is only known when the query runs), so the planner keeps
-- today's partition alone (migrations/0019).
SELECT count(*) AS current_visitors
  FROM (SELECT site, visitor
          FROM page_views
         WHERE visitor IS NOT NULL
           AND viewed_at >= %(five_minutes_ago)s
           AND viewed_at <= %(now)s
           AND (%(site)s::text IS NULL OR site = %(site)s)
        UNION
        SELECT site, visitor
          FROM events
         WHERE visitor IS NOT NULL
           AND occurred_at >= %(five_minutes_ago)s
           AND occurred_at <= %(now)s
           AND (%(site)s::text IS NULL OR site = %(site)s)) ids

-- current_visitors_ids --
-- Each id with a view or an event from `start` on (of one site or all): its latest time up to
-- `now`, and its times after (a clock far off: they count once now reaches them); what
-- tally/web/current_visitors.py keeps. Through the partial indexes of views and events with ids.
SELECT site, visitor, max(at) FILTER (WHERE at <= %(now)s) AS latest,
       array_agg(at) FILTER (WHERE at > %(now)s) AS ahead
  FROM (SELECT site, visitor, viewed_at AS at FROM page_views
         WHERE visitor IS NOT NULL AND viewed_at >= %(start)s AND (%(site)s::text IS NULL OR site = %(site)s)
        UNION ALL
        SELECT site, visitor, occurred_at FROM events
         WHERE visitor IS NOT NULL AND occurred_at >= %(start)s AND (%(site)s::text IS NULL OR site = %(site)s)) ids
 GROUP BY 1, 2

-- current_visitors_since --
-- The views and events with ids from `start` on recorded by transactions from `from_xid` on or in
-- `running` (what a kept count's snapshot did not see), at most `limit`: two arms each, not an
-- OR, so each reads by the index on recorded_xid (as stats_tail_days).
SELECT site, visitor, at
  FROM (SELECT site, visitor, viewed_at AS at FROM page_views WHERE recorded_xid >= %(from_xid)s::text::xid8
        UNION ALL
        SELECT site, visitor, viewed_at FROM page_views WHERE recorded_xid = ANY (%(running)s::text[]::xid8[])
        UNION ALL
        SELECT site, visitor, occurred_at FROM events WHERE recorded_xid >= %(from_xid)s::text::xid8
        UNION ALL
        SELECT site, visitor, occurred_at FROM events WHERE recorded_xid = ANY (%(running)s::text[]::xid8[])) since
 WHERE visitor IS NOT NULL AND at >= %(start)s AND (%(site)s::text IS NULL OR site = %(site)s)
 LIMIT %(limit)s

-- recent_visitors --
-- Views from `since` (24 hours, or 5 minutes, before `now`) and distinct visitors from
-- `five_minutes_ago`, matching every given filter (the times as values, as in current_visitors);
-- `event` and `goal_path` find their visitors in [goals_from, goals_until): the answer's window.
SELECT count(*) AS views_last_24h,
       count(DISTINCT (site, visitor)) FILTER (WHERE viewed_at >= %(five_minutes_ago)s AND visitor IS NOT NULL)
           AS current_visitors
  FROM tally_views_matching(%(since)s, 'infinity', %(site)s, {{filter_arguments}}, %(event)s,
                            %(goal_path)s, %(goals_from)s, coalesce(%(goals_until)s::timestamptz, 'infinity'),
                            NULL, NULL, NULL, NULL, NULL)
 WHERE viewed_at <= %(now)s

-- recent_senders_without_views --
-- With goals alone (`goals_only`, filtered_answer), the visitors of the 5 minutes to `now` that
-- recent_visitors and filtered_recent_edges leave out: ids that sent events in those minutes but
-- no view (the ids of events are visitors, as unfiltered). Those that reached the goals count
-- (goal_reached_ids).
SELECT DISTINCT e.site, e.visitor
  FROM events e
 WHERE e.visitor IS NOT NULL AND e.occurred_at >= %(five_minutes_ago)s AND e.occurred_at <= %(now)s
   AND (%(site)s::text IS NULL OR e.site = %(site)s)
   AND NOT EXISTS (
           SELECT 1 FROM page_views v
            WHERE v.site = e.site AND v.visitor = e.visitor
              AND v.viewed_at >= %(five_minutes_ago)s AND v.viewed_at <= %(now)s)

-- referrer_domains --
-- Every referrer value (domain or search engine's name) the rollups and the tail know since
-- `since` (a search engine's name filters on all of its domains, those of views stored without
-- the name too); the tail from the partitions of its days.
SELECT DISTINCT value FROM page_view_day_values
 WHERE dim = 'referrer' AND day >= (%(since)s::timestamptz AT TIME ZONE 'UTC')::date
UNION
SELECT DISTINCT referrer FROM (
    SELECT {{dimension_values}} FROM page_views
     WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[])) AND referrer IS NOT NULL
       AND viewed_at >= coalesce(%(tail_from)s::timestamptz, 'infinity')
       AND viewed_at < coalesce(%(tail_to)s::timestamptz, 'infinity')) tail

-- filtered_export --
-- Views and visitors per day (in `tz`) and path of the views in [start, end) matching every
-- filter, in the export's order: by day, then most viewed, then by path in code point order.
SELECT (viewed_at AT TIME ZONE %(tz)s)::date AS day, path, count(*) AS views,
       count(DISTINCT (site, visitor)) FILTER (WHERE visitor IS NOT NULL) AS visitors
  FROM tally_views_matching(%(start)s, %(end)s, %(site)s, {{filter_arguments}}, %(event)s,
           %(goal_path)s, %(start)s, %(end)s, NULL, NULL, NULL, NULL, NULL)
 GROUP BY 1, 2
 ORDER BY 1, 3 DESC, path COLLATE "C"

-- claim_report_delivery --
-- Take (site, period, recipient) for sending, in its own committed statement: a new row, or one a
-- run before left unsent ('sending': killed mid-send; 'retrying': a temporary failure). Returns
-- nothing for one already sent or failed for good. attempts counts the sends tried.
INSERT INTO tally_report_deliveries AS d (site, period, recipient, message_id, status)
VALUES (%(site)s, %(period)s, %(recipient)s, %(message_id)s, 'sending')
ON CONFLICT (site, period, recipient) DO UPDATE
   SET status = 'sending', attempts = d.attempts + 1, claimed_at = now()
 WHERE d.status IN ('sending', 'retrying')
RETURNING d.message_id, d.attempts

-- finish_report_delivery --
-- Record how a claimed send ended: 'sent' (with its time), 'retrying' or 'failed' (with the error).
UPDATE tally_report_deliveries
   SET status = %(status)s, error = %(error)s,
       sent_at = CASE WHEN %(status)s = 'sent' THEN now() END
 WHERE site = %(site)s AND period = %(period)s AND recipient = %(recipient)s AND status = 'sending'

-- report_sites --
-- The sites with views in [start, end): rolled up, or in the tail the rollup state leaves out.
SELECT site FROM page_view_buckets WHERE bucket >= %(start)s AND bucket < %(end)s
 UNION
SELECT site FROM page_views
 WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
   AND viewed_at >= %(start)s AND viewed_at < %(end)s
 ORDER BY 1

-- report_delivery_failures --
-- The last reports that could not be delivered, newest first (the owner's dashboard).
SELECT site, period, recipient, status, attempts, claimed_at, error
  FROM tally_report_deliveries
 WHERE status IN ('failed', 'retrying')
 ORDER BY claimed_at DESC
 LIMIT 20

-- lock_report_run --
-- One send_reports run at a time, however deferred: a session lock, gone with its session.
SELECT pg_advisory_lock(%(key)s)

-- cluster_identifier --
-- The primary's cluster, which its streaming standbys share (tally/web/replica.py), and its
-- database's OID, which a standby's copy of that database keeps.
SELECT system_identifier AS cluster,
       (SELECT oid::bigint FROM pg_database WHERE datname = current_database()) AS database
  FROM pg_control_system()

-- unlock_report_run --
-- The end of a send_reports run.
SELECT pg_advisory_unlock(%(key)s)

-- replica_state --
-- Whether the replica is a standby, and how far behind its primary it is (tally/web/replica.py):
-- 0 while it streams and has replayed up to the end of WAL its primary last reported
-- (`latest_end_lsn`; an idle primary sends nothing, and the age of the last replayed transaction
-- would grow though nothing is missing), else the age of the last transaction it replayed (NULL:
-- none since it started). A role without pg_read_all_stats sees the receiver's row with NULLs:
-- the row then says a receiver runs, and what it received stands for what the primary reported.
-- Its cluster's system identifier too: a standby of another primary is not this one's replica;
-- and its database's OID: the primary's standby, connected to another of its databases (a URL
-- without the database's name reaches `postgres`), has none of Tally's tables. And whether it has
-- replayed all the WAL it received (NULL: none received since it started): with its primary gone,
-- that is everything the primary sent. And how far it has replayed (NULL: not a standby).
SELECT pg_is_in_recovery() AS standby, (SELECT system_identifier FROM pg_control_system()) AS cluster,
       (SELECT oid::bigint FROM pg_database WHERE datname = current_database()) AS database,
       CASE WHEN receiver.pid IS NOT NULL AND coalesce(receiver.status, 'streaming') = 'streaming'
             AND pg_last_wal_replay_lsn() >= coalesce(receiver.latest_end_lsn, pg_last_wal_receive_lsn())
            THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS lag_seconds,
       pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() AS replayed_received,
       pg_last_wal_replay_lsn()::text AS replayed
  FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver receiver ON true

-- primary_wal_position --
-- Where the primary's WAL stands, flushed (what a standby can have been sent): the replica's
-- checker compares what the replica has replayed with it (tally/web/replica_probes.py).
SELECT pg_current_wal_flush_lsn()::text

-- session_ended --
-- Whether a logout ended the owner's session of this digest (tally/web/ended_sessions.py).
SELECT EXISTS (SELECT FROM tally_ended_sessions WHERE session_digest = %(digest)s) AS ended

-- end_session --
-- A logout: the session's digest kept until the session would have expired in any case, and
-- the rows of sessions that have expired since forgotten (the cookie's own expiry refuses them).
WITH forgotten AS (
    DELETE FROM tally_ended_sessions WHERE expires_at < now()
)
INSERT INTO tally_ended_sessions (session_digest, expires_at)
VALUES (%(digest)s, now() + make_interval(secs => %(lifetime_seconds)s))
ON CONFLICT (session_digest) DO NOTHING
