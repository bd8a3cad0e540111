-- The last failed jobs (tally_recent_failures: GET /api/jobs, the dashboard's queue panel)
-- were found by taking every failed job's last 'failed' event and sorting them all: with
-- 10,000 failed jobs among a million, 3.5 s a request (bench/jobs_page.py's data). Now the
-- 'failed' events are read newest first through an index of their own, each kept if it is
-- its job's last and the job is still failed, until 50 are found (about a millisecond);
-- failed jobs without such an event (their events pruned, a status set by hand) follow,
-- newest first, as before. The same rows in the same order (tests/test_jobs_page.py).
-- The index is built without CONCURRENTLY (a migration is one transaction): on 3M events
-- it takes about a second, while job events wait.
CREATE INDEX tally_events_failed_at_idx ON procrastinate_events (at) WHERE type = 'failed';

CREATE OR REPLACE VIEW tally_recent_failures AS
WITH with_event AS MATERIALIZED (
    -- Scalar subqueries, not joins: the planner then walks the index in order and stops at
    -- 50, where a join it may hash reads every failed event first.
    SELECT e.job_id, e.at AS failed_at
      FROM procrastinate_events e
     WHERE e.type = 'failed'
       AND (SELECT job.status FROM procrastinate_jobs job WHERE job.id = e.job_id) = 'failed'
       AND (SELECT later.id FROM procrastinate_events later
             WHERE later.job_id = e.job_id AND later.type = 'failed'
             ORDER BY later.at DESC, later.id DESC LIMIT 1) = e.id
     ORDER BY e.at DESC, e.job_id DESC
     LIMIT 50
), candidates AS (
    SELECT job_id, failed_at FROM with_event
    UNION ALL
    (SELECT job.id, NULL::timestamptz
       FROM procrastinate_jobs job
      WHERE job.status = 'failed' AND (SELECT count(*) FROM with_event) < 50
        AND NOT EXISTS (SELECT FROM procrastinate_events e WHERE e.job_id = job.id AND e.type = 'failed')
      ORDER BY job.id DESC
      LIMIT 50)
)
SELECT job.id AS job_id,
       job.task_name,
       job.attempts,
       job.queue_name,
       job.args,
       candidates.failed_at,
       err.error
  FROM candidates
  JOIN procrastinate_jobs job ON job.id = candidates.job_id
  LEFT JOIN LATERAL (
      SELECT error FROM tally_job_errors WHERE job_id = job.id ORDER BY id DESC LIMIT 1
  ) err ON true
 ORDER BY candidates.failed_at DESC NULLS LAST, job.id DESC
 LIMIT 50;
