-- tally_job_overview's oldest_waiting counted from a job's first defer, so a job retried (by
-- hand, re-queued after its worker died, or due after a scheduled retry) showed as waiting
-- since it was first deferred. A job waits from when it last became runnable, as
-- GET /api/jobs and /metrics count it (tally/queries.sql, oldest_waiting_job).
CREATE OR REPLACE VIEW tally_job_overview AS
SELECT job.task_name,
       job.status,
       count(*) AS jobs,
       max(now() - ready.at) FILTER (
           WHERE job.status = 'todo' AND (job.scheduled_at IS NULL OR job.scheduled_at <= now())
       ) AS oldest_waiting
  FROM procrastinate_jobs job
  LEFT JOIN LATERAL (
      SELECT greatest(max(at), job.scheduled_at) AS at
        FROM procrastinate_events
       WHERE job_id = job.id AND type IN ('deferred', 'retried', 'deferred_for_retry')
  ) ready ON true
 GROUP BY job.task_name, job.status
 ORDER BY job.task_name, job.status;
