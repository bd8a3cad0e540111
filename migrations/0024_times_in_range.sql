-- A view or event is stored with any time a reader can count: from the year 1000 to 8999 (UTC).
-- `INSERT INTO page_views (path, viewed_at) VALUES ('/', 'infinity')` was stored, and then no
-- stats request could answer (a 500: the tail's last day has no end), the rollup failed on it
-- ("cannot subtract infinite timestamps"), so cleanup, which folds first, failed too, and
-- maintain_partitions could not name its day; a year past 9999 or before Christ did the same
-- to stats, and to maintain_partitions for good once folded. Such a time is now refused by a
-- CHECK with its name in the error, and the rows stored before are deleted: none could ever
-- be counted. A live table: the constraints come NOT VALID (catalog rows, each lock waited
-- for briefly), then are validated by a read that inserts do not wait for.

-- step: refuse such times from now on
ALTER TABLE page_views DROP CONSTRAINT IF EXISTS page_views_viewed_at_in_range,
    ADD CONSTRAINT page_views_viewed_at_in_range
        CHECK (viewed_at >= '1000-01-01 00:00+00' AND viewed_at < '9000-01-01 00:00+00') NOT VALID;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_occurred_at_in_range,
    ADD CONSTRAINT events_occurred_at_in_range
        CHECK (occurred_at >= '1000-01-01 00:00+00' AND occurred_at < '9000-01-01 00:00+00') NOT VALID;

-- step: delete the rows stored with such times, and the tail's marks of their days
DELETE FROM page_views WHERE viewed_at < '1000-01-01 00:00+00' OR viewed_at >= '9000-01-01 00:00+00';
DELETE FROM events WHERE occurred_at < '1000-01-01 00:00+00' OR occurred_at >= '9000-01-01 00:00+00';
DELETE FROM page_view_tail_days WHERE day < '1000-01-01' OR day >= '9000-01-01';

-- step: validate the constraints (reads every row; inserts go on meanwhile)
ALTER TABLE page_views VALIDATE CONSTRAINT page_views_viewed_at_in_range;
ALTER TABLE events VALIDATE CONSTRAINT events_occurred_at_in_range;
