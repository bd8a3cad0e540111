-- Views for a person in psql: what the queue is doing, what failed, who is alive.
-- They read procrastinate's tables and Tally's own; see README "Inspect the queue".

-- Jobs by task and status, with how long the oldest of them has been waiting to run.
CREATE VIEW tally_job_overview AS
SELECT job.task_name,
       job.status,
       count(*) AS jobs,
       max(now() - deferred.at) FILTER (
           WHERE job.status = 'todo' AND (job.scheduled_at IS NULL OR job.scheduled_at <= now())
       ) AS oldest_waiting
  FROM procrastinate_jobs job
  LEFT JOIN LATERAL (
      SELECT min(at) AS at FROM procrastinate_events WHERE job_id = job.id AND type = 'deferred'
  ) deferred ON true
 GROUP BY job.task_name, job.status
 ORDER BY job.task_name, job.status;

-- The last 50 failed jobs, newest first, with the error their last attempt raised.
CREATE VIEW tally_recent_failures AS
SELECT job.id AS job_id,
       job.task_name,
       job.attempts,
       job.queue_name,
       job.args,
       failed.at AS failed_at,
       err.error
  FROM procrastinate_jobs job
  JOIN LATERAL (
      SELECT max(at) AS at FROM procrastinate_events WHERE job_id = job.id AND type = 'failed'
  ) failed ON true
  LEFT JOIN LATERAL (
      SELECT error FROM tally_job_errors WHERE job_id = job.id ORDER BY id DESC LIMIT 1
  ) err ON true
 WHERE job.status = 'failed'
 ORDER BY failed.at DESC NULLS LAST, job.id DESC
 LIMIT 50;

-- Workers, their heartbeat age and what they are running right now.
CREATE VIEW tally_workers AS
SELECT worker.id AS worker_id,
       worker.last_heartbeat,
       now() - worker.last_heartbeat AS silent_for,
       count(job.id) AS running_jobs,
       string_agg(job.task_name || '#' || job.id, ', ' ORDER BY job.id) AS running
  FROM procrastinate_workers worker
  LEFT JOIN procrastinate_jobs job ON job.worker_id = worker.id AND job.status = 'doing'
 GROUP BY worker.id, worker.last_heartbeat
 ORDER BY worker.last_heartbeat DESC;

-- Jobs running now, with how long they have run and their worker's silence.
CREATE VIEW tally_running_jobs AS
SELECT job.id AS job_id,
       job.task_name,
       job.attempts,
       job.worker_id,
       now() - started.at AS running_for,
       now() - worker.last_heartbeat AS worker_silent_for
  FROM procrastinate_jobs job
  LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id
  LEFT JOIN LATERAL (
      SELECT max(at) AS at FROM procrastinate_events WHERE job_id = job.id AND type = 'started'
  ) started ON true
 WHERE job.status = 'doing'
 ORDER BY started.at;

-- The last tick each clock schedule deferred.
CREATE VIEW tally_periodic_ticks AS
SELECT task_name,
       periodic_id,
       to_timestamp(max(defer_timestamp)) AS last_tick,
       now() - to_timestamp(max(defer_timestamp)) AS age
  FROM procrastinate_periodic_defers
 GROUP BY task_name, periodic_id
 ORDER BY task_name;
