-- A worker's fetch with no queue paused is procrastinate's own again. Tally's copy
-- (migrations/0010) adds `NOT EXISTS (... tally_paused_queues ...)`, and with it the planner
-- sorted every waiting job for each fetch instead of reading the first of its index: 16 ms a
-- fetch with 20,000 jobs waiting (pip PostgreSQL 18, EXPLAIN ANALYZE; 1 ms without it), so a
-- worker ran 62 short jobs a second where procrastinate's ran 220 (bench/throughput.py; the
-- table in docs/BENCHMARKS.md says 638). With a queue paused, the copy runs as before.
CREATE OR REPLACE FUNCTION tally_fetch_job_v1(target_queue_names character varying[], p_worker_id bigint)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
AS $$
DECLARE
    found_jobs procrastinate_jobs;
BEGIN
    -- No queue paused (nearly always): procrastinate's own fetch, which stops at the first job
    -- of its index. Tally's addition made the planner sort every waiting job instead.
    IF NOT EXISTS (SELECT FROM tally_paused_queues) THEN
        SELECT * INTO found_jobs FROM procrastinate_fetch_job_v2(target_queue_names, p_worker_id);
        RETURN found_jobs;
    END IF;
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
