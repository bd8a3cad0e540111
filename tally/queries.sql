-- Every query Tally runs, one named block each, loaded into `tally.db.QUERIES`.
-- Parameters are %(name)s placeholders, bound by psycopg, never formatted in.

-- delete_expired_page_views_batch --
-- Delete up to batch_size of the oldest page views older than the cutoff; one short transaction.
WITH doomed AS (
    SELECT id FROM page_views
     WHERE viewed_at < %(cutoff)s
     ORDER BY viewed_at
     LIMIT %(batch_size)s
), deleted AS (
    DELETE FROM page_views WHERE id IN (SELECT id FROM doomed) RETURNING 1
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

-- database_now --
-- The database's clock, and that it answers at all.
SELECT now() AS now

-- worker_heartbeats --
-- Workers whose heartbeat is younger than the stalled threshold, and the youngest heartbeat's age.
SELECT count(*) FILTER (WHERE last_heartbeat >= now() - make_interval(secs => %(stalled_after)s)) AS alive,
       extract(epoch FROM now() - max(last_heartbeat))::float8 AS youngest_heartbeat_age
  FROM procrastinate_workers

-- last_periodic_defer --
-- Age in seconds of the newest periodic defer any clock made.
SELECT extract(epoch FROM now() - to_timestamp(max(defer_timestamp)))::float8 AS age
  FROM procrastinate_periodic_defers
