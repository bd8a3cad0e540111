-- The jobs page (GET /jobs) lists jobs newest first, filtered by status, task or queue,
-- a page at a time after the last id shown (keyset). With a million finished jobs each
-- filter needs an index that yields its jobs in id order; procrastinate has none of them
-- (its queue_name index has no id). Built without CONCURRENTLY (a migration is one
-- transaction): on a table of a million jobs each takes about a second, while inserts wait.
CREATE INDEX tally_jobs_status_id_idx ON procrastinate_jobs (status, id);
CREATE INDEX tally_jobs_task_id_idx ON procrastinate_jobs (task_name, id);
CREATE INDEX tally_jobs_queue_id_idx ON procrastinate_jobs (queue_name, id);

-- The job page shows each error with its traceback and the worker it happened on: the
-- worker's error middleware stores them beside the one-line error (NULL for errors
-- recorded before this migration). The worker, because procrastinate forgets it: a
-- stopped worker's row is deleted, and its jobs' worker_id set to NULL.
ALTER TABLE tally_job_errors ADD COLUMN traceback text, ADD COLUMN worker text;
