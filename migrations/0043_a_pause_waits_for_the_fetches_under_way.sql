-- A pause answered, and a job of its queue deferred after it could still start. The fetch
-- looks for paused queues in one statement and fetches in another, each with its own
-- snapshot: a pause and a job both committed between the two, and procrastinate's fetch
-- (the path for "nothing paused") took the job. CI saw it once (tests/test_queue_pause.py, a
-- loaded machine stalling a worker's backend between the statements); a test holds the fetch
-- there with a lock. Now every fetch holds the advisory lock (7246, 0) shared for its
-- statement, and a pause, whichever way its row is inserted (the jobs page, the API, or SQL as
-- README shows), takes it exclusively first, by a trigger, until it commits: it waits for the
-- fetches under way (milliseconds each), and every fetch after it sees the pause. 7245 is the
-- workers' session locks (0006); shared holders do not wait for each other, so fetches run as
-- before.
CREATE OR REPLACE FUNCTION tally_fetch_job_v1(target_queue_names character varying[], p_worker_id bigint)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
AS $$
DECLARE
    found_jobs procrastinate_jobs;
BEGIN
    -- Held, shared, until the fetch's transaction ends (its statement: the worker fetches in
    -- autocommit). A pause takes it alone before it inserts its row (the trigger below).
    PERFORM pg_advisory_xact_lock_shared(7246, 0);
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

CREATE FUNCTION tally_pause_waits_for_fetches() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7246, 0);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tally_pause_waits_for_fetches
    BEFORE INSERT ON tally_paused_queues
    FOR EACH STATEMENT EXECUTE FUNCTION tally_pause_waits_for_fetches();
