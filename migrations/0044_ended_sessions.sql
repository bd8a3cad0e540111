-- Logging out ends the session on the server too. The owner's session is a signed cookie
-- (tally/web/sessions.py): before this, logging out only asked the browser to forget it, and a
-- copy of the cookie (taken from the browser, a proxy's log, a shared machine's profile) opened
-- the stats and the jobs page until its 7 days ended. Now the logout writes the session's
-- digest here (SHA-256 of the random value the cookie carries, never the cookie), and every
-- request that comes with a session cookie looks here first, on the primary, so a logout on
-- one web dyno ends the session on all of them. A row is kept until the session would have
-- expired anyway; each logout deletes the rows past that, so the table holds at most the
-- logouts of one session's lifetime.
CREATE TABLE IF NOT EXISTS tally_ended_sessions (
    session_digest bytea PRIMARY KEY CHECK (octet_length(session_digest) = 32),
    ended_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
