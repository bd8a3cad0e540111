-- Reports by email (issue 21): one row per (site, period, recipient), the record that makes
-- each report go out once. send_reports claims a row ('sending', committed) before it talks
-- to the SMTP server and marks it 'sent' after the server accepted the message; a row left
-- in 'sending' (a worker killed mid-send) or 'retrying' (a 4xx, a dropped connection) is sent
-- again, with the same message_id, by the next run; 'sent' and 'failed' (a 5xx, or too many
-- temporary failures) are final. `period` names the period: '2026-W48' (a week, Monday to
-- Sunday in TIMEZONE) or '2026-11' (a month).
CREATE TABLE tally_report_deliveries (
    site text NOT NULL,
    period text NOT NULL,
    recipient text NOT NULL,
    message_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('sending', 'retrying', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 1,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    error text,
    PRIMARY KEY (site, period, recipient)
);

-- The dashboard's list of reports not delivered.
CREATE INDEX tally_report_deliveries_undelivered ON tally_report_deliveries (claimed_at)
    WHERE status IN ('failed', 'retrying');
