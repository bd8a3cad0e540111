-- Every query Tally runs, one named block each, loaded into `tally.db.QUERIES`.
-- Parameters are %(name)s placeholders, bound by psycopg, never formatted in.

-- delete_expired_page_views_batch --
-- Delete up to batch_size of the oldest rolled-up page views older than the cutoff; one short transaction.
-- The ids go in as an array: `id IN (subquery)` lets the planner pick a hash join over the whole table.
WITH deleted AS (
    DELETE FROM page_views
     WHERE id = ANY (ARRAY(
         SELECT id FROM page_views
          WHERE viewed_at < %(cutoff)s
            -- never delete a view before it is in the rollups, or stats would lose it
            AND recorded_xid < %(watermark)s AND NOT recorded_xid = ANY (%(in_progress)s::xid8[])
          ORDER BY viewed_at
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
-- Workers whose heartbeat is younger than the stalled threshold, and the youngest heartbeat's age.
SELECT count(*) FILTER (WHERE last_heartbeat >= now() - make_interval(secs => %(stalled_after)s)) AS alive,
       extract(epoch FROM now() - max(last_heartbeat))::float8 AS youngest_heartbeat_age
  FROM procrastinate_workers

-- last_periodic_defer --
-- Age in seconds of the newest periodic defer any clock made.
SELECT extract(epoch FROM now() - to_timestamp(max(defer_timestamp)))::float8 AS age
  FROM procrastinate_periodic_defers

-- insert_page_views_plain --
-- Store a batch of views of the default site without source or visitor (server-side senders):
-- one statement, all rows or none, two arrays to send instead of five.
INSERT INTO page_views (path, referrer)
SELECT path, referrer FROM unnest(%(paths)s::text[], %(referrers)s::text[]) AS batch(path, referrer)

-- insert_page_views --
-- Store a batch of views in one statement: all rows or none.
INSERT INTO page_views (site, path, referrer, source, visitor)
SELECT site, path, referrer, source, visitor
  FROM unnest(%(sites)s::text[], %(paths)s::text[], %(referrers)s::text[], %(sources)s::text[],
              %(visitors)s::bigint[]) AS batch(site, path, referrer, source, visitor)

-- rollup_page_views --
-- Fold every view committed since the last rollup into the rollups (migrations/0005); returns how many.
SELECT tally_rollup_page_views() AS views

-- delete_old_rollups --
-- Drop rollups older than the cutoff day (they outlive raw views, but not forever).
WITH buckets AS (
    DELETE FROM page_view_buckets WHERE bucket < %(cutoff_day)s::date::timestamptz RETURNING 1
), paths AS (
    DELETE FROM page_view_daily_paths WHERE day < %(cutoff_day)s RETURNING 1
), sources AS (
    DELETE FROM page_view_daily_sources WHERE day < %(cutoff_day)s RETURNING 1
), referrers AS (
    DELETE FROM page_view_daily_referrers WHERE day < %(cutoff_day)s RETURNING 1
), bucket_paths AS (
    DELETE FROM page_view_bucket_paths WHERE bucket < %(cutoff_day)s::date::timestamptz RETURNING 1
), bucket_sources AS (
    DELETE FROM page_view_bucket_sources WHERE bucket < %(cutoff_day)s::date::timestamptz RETURNING 1
), bucket_referrers AS (
    DELETE FROM page_view_bucket_referrers WHERE bucket < %(cutoff_day)s::date::timestamptz RETURNING 1
), spans AS (
    DELETE FROM page_view_visitor_spans WHERE first_bucket < %(cutoff_day)s::date::timestamptz RETURNING 1
), path_spans AS (
    DELETE FROM page_view_path_visitor_spans WHERE first_bucket < %(cutoff_day)s::date::timestamptz RETURNING 1
), crawlers AS (
    DELETE FROM crawler_hits_daily WHERE day < %(cutoff_day)s RETURNING 1
)
SELECT (SELECT count(*) FROM buckets) + (SELECT count(*) FROM paths) + (SELECT count(*) FROM sources)
     + (SELECT count(*) FROM referrers) + (SELECT count(*) FROM bucket_paths)
     + (SELECT count(*) FROM bucket_sources) + (SELECT count(*) FROM bucket_referrers)
     + (SELECT count(*) FROM spans) + (SELECT count(*) FROM path_spans) + (SELECT count(*) FROM crawlers)
       AS removed

-- rollup_state --
-- What the last rollup folded (see migrations/0004), when, and the database's clock.
SELECT watermark, in_progress, rolled_up_at, last_folded, now() AS now FROM page_view_rollup_state

-- stats_state --
-- The rollup state a stats request reads first, the database's clock and today in the zone `tz`.
SELECT watermark, in_progress, now() AS now, (now() AT TIME ZONE %(tz)s)::date AS today
  FROM page_view_rollup_state

-- local_midnight --
-- The instant a day starts in the zone `tz`.
SELECT %(day)s::date::timestamp AT TIME ZONE %(tz)s AS start

-- stats_tail --
-- The views not yet rolled up, by day in `tz`, whether in the last full 24 hours' buckets (from
-- `recent` on), path, source and referrer domain (parsed once per group; the caller adds up rows
-- of one domain), with how many carry a visitor id. Grouped here, not per bucket: a long tail (a
-- backfill, a stopped worker) costs the web a row per day and name, not per 15 minutes. The
-- bounds come in as values, so the planner sees how few rows lie above the watermark.
SELECT day, recent, path, source, tally_referrer_domain(referrer, site) AS domain,
       sum(views)::bigint AS views, sum(with_visitor)::bigint AS with_visitor
  FROM (SELECT (date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AT TIME ZONE %(tz)s)::date AS day,
               date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') >= %(recent)s AS recent,
               path, source, referrer, site, count(*) AS views, count(visitor) AS with_visitor
          FROM page_views
         WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
           AND (%(site)s::text IS NULL OR site = %(site)s)
         GROUP BY 1, 2, 3, 4, 5, 6) tail
 GROUP BY 1, 2, 3, 4, 5

-- stats_tail_visitors --
-- The tail's visitors, counted by the days (in `tz`) of their first and last views there and,
-- if the rollups know them, of their rolled-up span. Asked only when the tail has visitor ids.
SELECT first_day, last_day, old_first_day, old_last_day, count(*) AS visitors
  FROM (SELECT (seen.first_bucket AT TIME ZONE %(tz)s)::date AS first_day,
               (seen.last_bucket AT TIME ZONE %(tz)s)::date AS last_day,
               (known.first_bucket AT TIME ZONE %(tz)s)::date AS old_first_day,
               (known.last_bucket AT TIME ZONE %(tz)s)::date AS old_last_day
          FROM (SELECT site, visitor, min(date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00')) AS first_bucket,
                       max(date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00')) AS last_bucket
                  FROM page_views
                 WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
                   AND visitor IS NOT NULL AND (%(site)s::text IS NULL OR site = %(site)s)
                 GROUP BY 1, 2) seen
          LEFT JOIN page_view_visitors known ON known.site = seen.site AND known.visitor = seen.visitor) spans
 GROUP BY 1, 2, 3, 4

-- views_waiting --
-- How many committed views the next rollup will fold (the stats tail).
SELECT (SELECT count(*) FROM page_views WHERE recorded_xid >= %(watermark)s)
     + (SELECT count(*) FROM page_views WHERE recorded_xid = ANY (%(in_progress)s::xid8[])) AS views

-- stats_raw_range --
-- Views in [start, end) counted from the raw table (the partial bucket 24 hours ago), and the
-- crawler hits filtered on the UTC days from first_day on.
SELECT (SELECT count(*) FROM page_views
         WHERE viewed_at >= %(start)s AND viewed_at < %(end)s AND (%(site)s::text IS NULL OR site = %(site)s))
       AS views,
       (SELECT coalesce(sum(hits), 0)::bigint FROM crawler_hits_daily
         WHERE day >= %(first_day)s AND (%(site)s::text IS NULL OR site = %(site)s)) AS crawlers

-- stats_rolled_up_days --
-- Rolled-up views per day in the zone `tz` since `since`, and those in buckets from `recent` on.
SELECT (bucket AT TIME ZONE %(tz)s)::date AS day, sum(views)::bigint AS views,
       coalesce(sum(views) FILTER (WHERE bucket >= %(recent)s), 0)::bigint AS recent
  FROM page_view_buckets
 WHERE bucket >= %(since)s AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1

-- stats_rolled_up_visitors --
-- Rolled-up visitors by the days (in the zone `tz`) of their first and last views.
SELECT (first_bucket AT TIME ZONE %(tz)s)::date AS first_day, (last_bucket AT TIME ZONE %(tz)s)::date AS last_day,
       sum(visitors)::bigint AS visitors
  FROM page_view_visitor_spans
 -- a visitor id lives one day (its salt's), so a span that reaches the window starts at most 3 days before
 WHERE first_bucket >= %(start)s::timestamptz - interval '3 days' AND last_bucket >= %(start)s
   AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1, 2

-- stats_rolled_up_paths --
-- Rolled-up views per path since `start`: whole UTC days after the one it falls in, and that
-- day's buckets from `start` on.
SELECT path, sum(views)::bigint AS views
  FROM (SELECT path, views FROM page_view_daily_paths
         WHERE day > (%(start)s::timestamptz AT TIME ZONE 'UTC')::date AND (%(site)s::text IS NULL OR site = %(site)s)
        UNION ALL
        SELECT path, views FROM page_view_bucket_paths
         WHERE bucket >= %(start)s
           AND bucket < ((%(start)s::timestamptz AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC'
           AND (%(site)s::text IS NULL OR site = %(site)s)) counted
 GROUP BY path

-- stats_rolled_up_sources --
-- Rolled-up views per source since `start`: whole UTC days after the one it falls in, and that
-- day's buckets from `start` on.
SELECT source, sum(views)::bigint AS views
  FROM (SELECT source, views FROM page_view_daily_sources
         WHERE day > (%(start)s::timestamptz AT TIME ZONE 'UTC')::date AND (%(site)s::text IS NULL OR site = %(site)s)
        UNION ALL
        SELECT source, views FROM page_view_bucket_sources
         WHERE bucket >= %(start)s
           AND bucket < ((%(start)s::timestamptz AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC'
           AND (%(site)s::text IS NULL OR site = %(site)s)) counted
 GROUP BY source

-- stats_rolled_up_referrers --
-- Rolled-up views per domain since `start`: whole UTC days after the one it falls in, and that
-- day's buckets from `start` on.
SELECT domain, sum(views)::bigint AS views
  FROM (SELECT domain, views FROM page_view_daily_referrers
         WHERE day > (%(start)s::timestamptz AT TIME ZONE 'UTC')::date AND (%(site)s::text IS NULL OR site = %(site)s)
        UNION ALL
        SELECT domain, views FROM page_view_bucket_referrers
         WHERE bucket >= %(start)s
           AND bucket < ((%(start)s::timestamptz AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC'
           AND (%(site)s::text IS NULL OR site = %(site)s)) counted
 GROUP BY domain

-- export_rolled_up_views --
-- Rolled-up views per day (in the zone `tz`) and path since `start`.
SELECT (bucket AT TIME ZONE %(tz)s)::date AS day, path, sum(views)::bigint AS views
  FROM page_view_bucket_paths
 WHERE bucket >= %(start)s AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1, 2

-- export_rolled_up_visitors --
-- Rolled-up visitors per path by the days (in the zone `tz`) of their first and last views there.
SELECT path, (first_bucket AT TIME ZONE %(tz)s)::date AS first_day, (last_bucket AT TIME ZONE %(tz)s)::date AS last_day,
       sum(visitors)::bigint AS visitors
  FROM page_view_path_visitor_spans
 WHERE first_bucket >= %(start)s::timestamptz - interval '3 days' AND last_bucket >= %(start)s
   AND (%(site)s::text IS NULL OR site = %(site)s)
 GROUP BY 1, 2, 3

-- export_tail --
-- The tail's views per bucket and path (kind 'views'), and each (path, visitor) among them with its
-- days there and, if rolled up already, its days in the rollups (kind 'visitor'); days in `tz`.
WITH tail AS MATERIALIZED (
    SELECT site, date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') AS bucket, path, visitor
      FROM page_views
     WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
       AND (%(site)s::text IS NULL OR site = %(site)s)
)
SELECT 'views' AS kind, bucket, path, (bucket AT TIME ZONE %(tz)s)::date AS first_day, NULL::date AS last_day,
       count(*) AS views, NULL::date AS old_first_day, NULL::date AS old_last_day
  FROM tail GROUP BY bucket, path
UNION ALL
SELECT 'visitor', NULL, seen.path, (seen.first_bucket AT TIME ZONE %(tz)s)::date,
       (seen.last_bucket AT TIME ZONE %(tz)s)::date, NULL,
       (known.first_bucket AT TIME ZONE %(tz)s)::date, (known.last_bucket AT TIME ZONE %(tz)s)::date
  FROM (SELECT site, path, visitor, min(bucket) AS first_bucket, max(bucket) AS last_bucket
          FROM tail WHERE visitor IS NOT NULL GROUP BY 1, 2, 3) seen
  LEFT JOIN page_view_path_visitors known
    ON known.site = seen.site AND known.path = seen.path AND known.visitor = seen.visitor

-- sites_rolled_up --
-- Rolled-up views per site since `since`.
SELECT site, sum(views)::bigint AS views FROM page_view_buckets WHERE bucket >= %(since)s GROUP BY site

-- sites_tail --
-- The tail's views per site since `since`.
SELECT site, count(*) AS views FROM page_views
 WHERE (recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[]))
   AND date_bin('15 minutes', viewed_at, '2000-01-01 00:00+00') >= %(since)s
 GROUP BY site

-- count_crawler_hit --
-- One request from a crawler, counted for its site and UTC day.
INSERT INTO crawler_hits_daily (site, day, hits) VALUES (%(site)s, (now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (site, day) DO UPDATE SET hits = crawler_hits_daily.hits + 1

-- visitor_salt --
-- The salt of a UTC day, made on first use (pg_strong_random, see migrations/0005).
WITH made AS (
    INSERT INTO visitor_salts (day) VALUES (%(day)s) ON CONFLICT (day) DO NOTHING RETURNING salt
)
SELECT salt FROM made UNION ALL SELECT salt FROM visitor_salts WHERE day = %(day)s LIMIT 1

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
INSERT INTO tally_job_errors (job_id, attempt, error) VALUES (%(job_id)s, %(attempt)s, %(error)s)

-- job_counts --
-- Jobs by task and status.
SELECT task_name, status::text AS status, count(*)::bigint AS jobs
  FROM procrastinate_jobs GROUP BY 1, 2 ORDER BY 1, 2

-- oldest_waiting_job --
-- Age in seconds of the oldest job ready to run but not started.
SELECT extract(epoch FROM now() - min(event.at))::float8 AS age
  FROM procrastinate_jobs job
  JOIN procrastinate_events event ON event.job_id = job.id AND event.type = 'deferred'
 WHERE job.status = 'todo' AND (job.scheduled_at IS NULL OR job.scheduled_at <= now())

-- recent_failures --
-- The last failed jobs, newest first, with the error of their last attempt (see the view).
SELECT job_id AS id, task_name, attempts, queue_name, failed_at, error
  FROM tally_recent_failures
 LIMIT %(limit)s

-- job_by_id --
-- One job with its lifecycle timestamps and last error.
SELECT job.id, job.task_name AS task, job.status::text AS status, job.attempts, job.queue_name AS queue,
       job.lock, job.args, job.priority, job.scheduled_at, job.worker_id,
       (SELECT min(at) FROM procrastinate_events WHERE job_id = job.id AND type = 'deferred') AS deferred_at,
       (SELECT max(at) FROM procrastinate_events WHERE job_id = job.id AND type = 'started') AS started_at,
       (SELECT max(at) FROM procrastinate_events WHERE job_id = job.id
         AND type IN ('succeeded', 'failed', 'cancelled', 'aborted')) AS finished_at,
       (SELECT error FROM tally_job_errors WHERE job_id = job.id ORDER BY id DESC LIMIT 1) AS last_error
  FROM procrastinate_jobs job
 WHERE job.id = %(job_id)s

-- retry_stalled_job --
-- Re-queue a stalled job only if it is still running under the worker it was found stalled with:
-- another retry may have re-queued it, and a live worker may already have picked it up again.
WITH still_stalled AS (
    SELECT id FROM procrastinate_jobs
     WHERE id = %(job_id)s AND status = 'doing' AND worker_id IS NOT DISTINCT FROM %(worker_id)s
       FOR UPDATE
)
SELECT count(procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL)) AS retried FROM still_stalled

-- page_views_total --
-- Every view ever recorded that is still counted: the rollups plus the tail.
SELECT (SELECT coalesce(sum(views), 0) FROM page_view_buckets)
     + (SELECT count(*) FROM page_views
         WHERE recorded_xid >= %(watermark)s OR recorded_xid = ANY (%(in_progress)s::xid8[])) AS views

-- hold_worker_session --
-- Take the worker's session lock and say so (one transaction: the row is never seen without the lock).
WITH locked AS (SELECT pg_advisory_lock(7245, %(worker_id)s::int))
INSERT INTO tally_worker_sessions (worker_id) SELECT %(worker_id)s FROM locked
ON CONFLICT (worker_id) DO NOTHING

-- jobs_of_lost_sessions --
-- Running jobs of workers whose session lock nobody holds any more: those workers are dead.
SELECT job.id AS job_id, job.worker_id, job.task_name
  FROM procrastinate_jobs job
  JOIN tally_worker_sessions session ON session.worker_id = job.worker_id
 WHERE job.status = 'doing'
   AND NOT EXISTS (
       SELECT 1 FROM pg_locks lock
        WHERE lock.locktype = 'advisory' AND lock.granted
          AND lock.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND lock.classid = 7245 AND lock.objid = job.worker_id::oid AND lock.objsubid = 2)

-- delete_lost_session_workers --
-- Forget the workers whose session lock nobody holds, once no job of theirs is running (a job
-- whose worker is forgotten would lose its worker_id, and with it the way to find it stalled).
WITH lost AS (
    DELETE FROM procrastinate_workers worker
     USING tally_worker_sessions session
     WHERE session.worker_id = worker.id
       AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs job WHERE job.worker_id = worker.id AND job.status = 'doing')
       AND NOT EXISTS (
           SELECT 1 FROM pg_locks lock
            WHERE lock.locktype = 'advisory' AND lock.granted
              AND lock.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND lock.classid = 7245 AND lock.objid = worker.id::oid AND lock.objsubid = 2)
    RETURNING 1
)
SELECT count(*) AS removed FROM lost

-- local_lock_timeout --
-- Bound this transaction's waits for locks (milliseconds), whatever the session's setting.
SELECT set_config('lock_timeout', %(milliseconds)s || 'ms', true)

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

-- unlock_report_run --
-- The end of a send_reports run.
SELECT pg_advisory_unlock(%(key)s)
