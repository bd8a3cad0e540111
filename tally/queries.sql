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

-- insert_page_views --
-- Store a batch of views in one statement: all rows or none.
INSERT INTO page_views (path, referrer)
SELECT path, referrer FROM unnest(%(paths)s::text[], %(referrers)s::text[]) AS batch(path, referrer)

-- rollup_page_views --
-- Fold every view below the oldest running transaction into the rollups; returns how many.
SELECT tally_rollup_page_views() AS views

-- delete_old_rollups --
-- Drop rollups older than the cutoff day (they outlive raw views, but not forever).
WITH hourly AS (
    DELETE FROM page_view_hourly WHERE hour < %(cutoff_day)s::date::timestamptz RETURNING 1
), paths AS (
    DELETE FROM page_view_daily_paths WHERE day < %(cutoff_day)s RETURNING 1
)
SELECT (SELECT count(*) FROM hourly) + (SELECT count(*) FROM paths) AS removed

-- rollup_state --
-- What the last rollup folded (see migrations/0004), when, and the database's clock.
SELECT watermark, in_progress, rolled_up_at, last_folded, now() AS now FROM page_view_rollup_state

-- stats_tail --
-- The views not yet rolled up, by hour and path. The bounds come in as values, so the planner
-- sees how few rows lie above the watermark (an index range), whatever the table's size.
SELECT date_trunc('hour', viewed_at, 'UTC') AS hour, path, count(*) AS views
  FROM page_views WHERE recorded_xid >= %(watermark)s GROUP BY 1, 2
UNION ALL
SELECT date_trunc('hour', viewed_at, 'UTC') AS hour, path, count(*) AS views
  FROM page_views WHERE recorded_xid = ANY (%(in_progress)s::xid8[]) GROUP BY 1, 2

-- views_waiting --
-- How many committed views the next rollup will fold (the stats tail).
SELECT (SELECT count(*) FROM page_views WHERE recorded_xid >= %(watermark)s)
     + (SELECT count(*) FROM page_views WHERE recorded_xid = ANY (%(in_progress)s::xid8[])) AS views

-- stats_raw_range --
-- Views in [start, end) counted from the raw table (the partial hour 24 hours ago).
SELECT count(*) AS views FROM page_views WHERE viewed_at >= %(start)s AND viewed_at < %(end)s

-- stats_rolled_up_hours --
-- Rolled-up views per UTC hour since a given hour.
SELECT hour, views FROM page_view_hourly WHERE hour >= %(since)s

-- stats_rolled_up_paths --
-- Rolled-up views per path over the days since first_day.
SELECT path, sum(views)::bigint AS views FROM page_view_daily_paths WHERE day >= %(first_day)s GROUP BY path

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
SELECT (SELECT coalesce(sum(views), 0) FROM page_view_hourly)
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
