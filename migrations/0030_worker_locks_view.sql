-- The session locks `python worker.py` holds (jobs/liveness.py, migrations/0006), one row per
-- worker holding its own, with the backend that holds it. Four queries of tally/queries.sql
-- asked pg_locks this in the same nine lines; an operator can ask it in psql:
--     SELECT * FROM tally_worker_locks JOIN tally_worker_sessions USING (worker_id);
CREATE VIEW tally_worker_locks AS
SELECT lock.objid::bigint AS worker_id, lock.pid
  FROM pg_locks lock
 WHERE lock.locktype = 'advisory' AND lock.granted
   AND lock.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND lock.classid = 7245 AND lock.objsubid = 2;
