-- A running job whose owner asked it to abort ends `aborted` whatever error it ends on, even
-- when the request lands after the worker looked. The worker's middleware (jobs/middleware.py,
-- end_aborted_when_asked) reads the job's abort_requested once the run raised, and a cancel that
-- commits between that read and the job's end was missed: an audit cancelled 47 jobs that fail
-- within milliseconds, and 33 ended `failed` (the row's abort_requested then set, and cleared by
-- procrastinate's finish; on a retry, `failed` with the attempt not counted).
--
-- Here the row itself decides, as the job ends: procrastinate_finish_job_v1 and
-- procrastinate_retry_job_v2 turn a `doing` job with abort_requested into `failed`, and this
-- makes it `aborted`, its attempt counted (the retry's path counts none) and its request
-- cleared, as procrastinate ends a job that raised JobAborted. A job that succeeded first stays
-- `succeeded`; a failure with no request, and a drain's or the time limit's abort (which set no
-- request on the row), stay as they were.
--
-- In steps: the trigger's lock on procrastinate_jobs waits behind every defer, fetch and finish
-- under way, and every one after waits behind it, so it waits briefly and tries again.

-- step: a job asked to abort that fails ends aborted
CREATE OR REPLACE FUNCTION tally_end_aborted_when_asked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := 'aborted';
    NEW.abort_requested := false;
    IF NEW.attempts = OLD.attempts THEN
        NEW.attempts := OLD.attempts + 1;
    END IF;
    RETURN NEW;
END
$$;

-- step: as it ends, whoever ends it
CREATE OR REPLACE TRIGGER tally_end_aborted_when_asked
    BEFORE UPDATE OF status ON procrastinate_jobs
    FOR EACH ROW
    WHEN (OLD.status = 'doing' AND OLD.abort_requested AND NEW.status = 'failed')
    EXECUTE FUNCTION tally_end_aborted_when_asked();
