-- A worker's liveness tied to its database session (good_job's trick). `python worker.py`
-- holds the session advisory lock (7245, worker id) on a connection of its own from its
-- start until it has drained, and records here, in the same transaction, that it does.
-- PostgreSQL releases the lock the moment that session ends (the process was killed, its
-- machine vanished and the server noticed), so a worker listed here whose lock nobody
-- holds is dead at once: its jobs are re-queued without waiting for heartbeat silence.
-- Workers not listed (the procrastinate CLI, WORKER_SESSION_LIVENESS=false behind
-- PgBouncer) are judged by their heartbeats alone.
CREATE TABLE tally_worker_sessions (
    worker_id bigint PRIMARY KEY REFERENCES procrastinate_workers (id) ON DELETE CASCADE,
    locked_at timestamptz NOT NULL DEFAULT now()
);
