-- A worker's session lock free for a moment is not a dead worker. Its session ends with a
-- database restart, a network blip past the keepalives or pg_terminate_backend while the
-- process lives on and runs its job; the sweep (migrations/0006) took the free lock for death
-- at once, re-queued the job and another worker ran it beside the first. A sweep now notes
-- when it first saw a worker's lock free (`lost_since`; cleared once the lock is held again:
-- the worker took it back on a new session) and re-queues only once it has stayed free for
-- jobs/liveness.py's LOST_SESSION_GRACE_SECONDS.
ALTER TABLE tally_worker_sessions ADD COLUMN lost_since timestamptz;
