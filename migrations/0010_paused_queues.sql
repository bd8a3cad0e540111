-- Paused queues: no worker starts a job of a queue listed here until it is resumed.
-- `POST /api/queues/<name>/pause` adds a row, `/resume` deletes it and wakes the workers
-- with the NOTIFY a new job would send. Readable and writable with plain SQL:
--     INSERT INTO tally_paused_queues (queue_name) VALUES ('default');
-- (a row deleted by hand resumes the queue at the workers' next poll, not at once).
CREATE TABLE tally_paused_queues (
    queue_name varchar PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- procrastinate_fetch_job_v2 (procrastinate 3.10), skipping the jobs of paused queues.
-- Tally's connector (tally.db.CatchingUpConnector) runs this in place of procrastinate's
-- fetch; procrastinate's own function is left as shipped, so a procrastinate migration
-- cannot silently undo a pause. The connector refuses to start when procrastinate's
-- fetch query is not the one this copy was made from (docs/ARCHITECTURE.md).
CREATE FUNCTION tally_fetch_job_v1(target_queue_names character varying[], p_worker_id bigint)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
AS $$
DECLARE
    found_jobs procrastinate_jobs;
BEGIN
    WITH candidate AS (
        SELECT jobs.*
            FROM procrastinate_jobs AS jobs
            WHERE
                NOT EXISTS (
                    SELECT 1
                        FROM procrastinate_jobs AS other_jobs
                        WHERE
                            jobs.lock IS NOT NULL
                            AND other_jobs.lock = jobs.lock
                            AND (
                                other_jobs.status = 'doing'
                                OR
                                (
                                    other_jobs.status = 'todo'
                                    AND (
                                        other_jobs.priority > jobs.priority
                                        OR (
                                        other_jobs.priority = jobs.priority
                                        AND other_jobs.id < jobs.id
                                        )
                                    )
                                )
                            )
                )
                AND jobs.status = 'todo'
                AND (target_queue_names IS NULL OR jobs.queue_name = ANY( target_queue_names ))
                AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
                -- Tally's one addition.
                AND NOT EXISTS (SELECT 1 FROM tally_paused_queues paused WHERE paused.queue_name = jobs.queue_name)
            ORDER BY jobs.priority DESC, jobs.id ASC LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED
    )
    UPDATE procrastinate_jobs
        SET status = 'doing', worker_id = p_worker_id
        FROM candidate
        WHERE procrastinate_jobs.id = candidate.id
        RETURNING procrastinate_jobs.* INTO found_jobs;

    RETURN found_jobs;
END;
$$;
