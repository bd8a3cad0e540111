-- The pairs of ids seen on two UTC days in a row move into their day's row (migrations/0020
-- says what they are for). `page_view_day_overlaps` held a row per value and (first bucket,
-- last bucket the day before): a backfill whose 25,000 ids came back every day for 30 days
-- (2.3M views) made 2.4M of them, 382 MB where its views took 560 MB, and the first stats
-- answer after each rollup read 1.5M of them, two time-zone conversions each, for the panels'
-- top rows alone: 2.4 to 3.2 s on PostgreSQL 15, past the web's 5 s statement timeout on a
-- larger backfill (a 503). Each pair is now three integers in the value's row of its UTC day,
-- `pairs`: the first bucket's number in the day (0-95), the last's in the day before (0-95),
-- and how many ids share them. A reader in a zone finds once per row which pairs fall on one
-- local day (two bucket numbers from the local day's bounds: `tally_day_overlaps`), and in UTC,
-- whose days meet no pair, reads none.

-- step: a day's row holds its pairs
ALTER TABLE page_view_day_values ADD COLUMN IF NOT EXISTS pairs integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS pair_steps integer[] NOT NULL DEFAULT '{}';

-- step: how pairs are added up and read
-- Two rows' pairs added up, pairs that come to nothing left out.
CREATE OR REPLACE FUNCTION tally_add_pairs(held integer[], added integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(ARRAY[first_slot, prev_slot, ids] ORDER BY first_slot, prev_slot), '{}')
      FROM (SELECT pair.first_slot, pair.prev_slot, sum(pair.ids)::integer AS ids
              FROM (VALUES (held), (added)) AS both_rows (a),
                   unnest(a[:][1:1], a[:][2:2], a[:][3:3]) AS pair (first_slot, prev_slot, ids)  -- see below
             GROUP BY 1, 2
            HAVING sum(pair.ids) <> 0) summed
$$;

-- A row's pairs as they count on a local day of 24 hours (most days of most zones), 96 integers:
-- such a day holds the UTC midnight L buckets after its start, and a pair (first f, last the
-- day before p) falls on it when f < L <= p, so the pairs that do are the sum of the first L
-- of these steps (+ids at f + 1, -ids at p + 1). Added up as the pairs are: a fold's steps
-- are its pairs', and a reader adds at most 95 integers a row however many pairs it holds.
CREATE OR REPLACE FUNCTION tally_pair_steps(pairs integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN pairs = '{}' THEN '{}'::integer[] ELSE (
        SELECT array_agg(coalesce(step.ids, 0) ORDER BY k)
          FROM generate_series(1, 96) AS k
          LEFT JOIN (SELECT edge.k, sum(edge.ids)::integer AS ids
                       FROM unnest(pairs[:][1:1], pairs[:][2:2], pairs[:][3:3]) AS pair (first_slot, prev_slot, ids),
                            LATERAL (VALUES (pair.first_slot + 1, pair.ids), (pair.prev_slot + 1, -pair.ids)) AS edge (k, ids)
                      WHERE pair.first_slot < pair.prev_slot
                      GROUP BY 1) step USING (k)) END
$$;

-- Two rows' steps added up.
CREATE OR REPLACE FUNCTION tally_add_steps(held integer[], added integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN added = '{}' THEN held WHEN held = '{}' THEN added ELSE (
        SELECT array_agg(coalesce(a, 0) + coalesce(b, 0) ORDER BY k) FROM unnest(held, added) WITH ORDINALITY AS both_rows (a, b, k)) END
$$;

-- The ids a row's pairs count twice on one local day (in `tz`), to take back, when that day is
-- in [since, until) (local midnights): the local day that holds the UTC midnight starting
-- `day`, if it starts before it; a pair falls on it when its last bucket the day before is at
-- or after the local day's start and its first bucket before the local day's end. The bounds
-- as bucket numbers (rounded up: a zone's midnight off the quarter hours, as before 1970, falls
-- inside a bucket), worked out once a row.
CREATE OR REPLACE FUNCTION tally_day_overlaps(day date, pairs integer[], pair_steps integer[], tz text, since timestamptz,
                                              until timestamptz)
RETURNS TABLE (local_day date, visitors bigint)
LANGUAGE sql STABLE AS $$
    SELECT bounds.local_day,
           CASE WHEN bounds.prev_from = bounds.first_until  -- a day of 24 hours: its steps
                THEN (SELECT coalesce(sum(step), 0) FROM unnest(pair_steps[1:bounds.prev_from]) AS step)
                -- A day of 23 or 25 hours (daylight saving), a zone's change of offset: its pairs.
                -- The array's columns, each read whole once: a subscript per pair (pairs[i][2])
                -- reads a large row's array out of TOAST again for every pair.
                ELSE (SELECT coalesce(sum(pair.ids), 0)
                        FROM unnest(pairs[:][1:1], pairs[:][2:2], pairs[:][3:3]) AS pair (first_slot, prev_slot, ids)
                       WHERE pair.prev_slot >= bounds.prev_from AND pair.first_slot < bounds.first_until) END::bigint
      FROM (SELECT local_day,
                   ceil(extract(epoch FROM opens - ((day - 1)::timestamp AT TIME ZONE 'UTC')) / 900)::integer AS prev_from,
                   ceil(extract(epoch FROM closes - (day::timestamp AT TIME ZONE 'UTC')) / 900)::integer AS first_until
              FROM (SELECT local_day, local_day::timestamp AT TIME ZONE tz AS opens,
                           (local_day + 1)::timestamp AT TIME ZONE tz AS closes
                      FROM (SELECT ((day::timestamp AT TIME ZONE 'UTC') AT TIME ZONE tz)::date AS local_day) AS utc_day
                   ) AS local_bounds
             WHERE opens >= since AND closes <= until
            OFFSET 0) AS bounds  -- kept a subquery: else the planner works the bounds out per pair
     WHERE bounds.prev_from < 96
$$;

-- migrations/0020's, read the same way: its bounds once a row as bucket numbers, not per cell
-- in time-zone arithmetic (1.7 us a cell), and the cells' columns whole. The same answers: a
-- cell counts its firsts before `split` (the next local midnight, a bucket number) and its
-- lasts from there, where its bucket is in [since, until).
CREATE OR REPLACE FUNCTION tally_day_visitors(day date, cells integer[], tz text, since timestamptz, until timestamptz)
RETURNS TABLE (local_day date, views bigint, visitors bigint)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN cell.slot < bounds.split THEN bounds.first_day ELSE bounds.first_day + 1 END,
           sum(cell.views), sum(CASE WHEN cell.slot < bounds.split THEN cell.firsts ELSE cell.lasts END)
      FROM (SELECT first_day,
                   ceil(extract(epoch FROM ((first_day + 1)::timestamp AT TIME ZONE tz) - starts) / 900)::integer AS split,
                   ceil(extract(epoch FROM greatest(since, starts) - starts) / 900)::integer AS slot_from,
                   ceil(extract(epoch FROM least(until, starts + interval '1 day') - starts) / 900)::integer AS slot_until
              FROM (SELECT ((day::timestamp AT TIME ZONE 'UTC') AT TIME ZONE tz)::date AS first_day,
                           day::timestamp AT TIME ZONE 'UTC' AS starts) AS utc_day
            OFFSET 0) AS bounds
     CROSS JOIN LATERAL unnest(cells[:][1:1], cells[:][2:2], cells[:][3:3], cells[:][4:4]) AS cell (slot, views, firsts, lasts)
     WHERE cell.slot >= bounds.slot_from AND cell.slot < bounds.slot_until
     GROUP BY 1
$$;

-- step: move the pairs into their day's rows, under the rollup's lock
DO $$
BEGIN
    -- Run again after an interrupted release: the table is gone once the pairs have moved.
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('page_view_day_overlaps')) IS DISTINCT FROM 'r' THEN
        RETURN;
    END IF;
    PERFORM FROM page_view_rollup_state FOR UPDATE;  -- no rollup adds pairs meanwhile
    INSERT INTO page_view_day_values (site, dim, value, day, views, cells, pairs, pair_steps)
    SELECT site, dim, value, day, 0, '{}', array_agg(ARRAY[first_slot, prev_slot, ids] ORDER BY first_slot, prev_slot),
           '{}'
      FROM (SELECT site, dim, value, (first_bucket AT TIME ZONE 'UTC')::date AS day,
                   (extract(epoch FROM first_bucket - date_trunc('day', first_bucket, 'UTC')) / 900)::integer AS first_slot,
                   (extract(epoch FROM prev_last - (date_trunc('day', first_bucket, 'UTC') - interval '1 day')) / 900)::integer
                       AS prev_slot,
                   visitors::integer AS ids
              FROM page_view_day_overlaps WHERE visitors <> 0) pairs
     GROUP BY 4, 1, 2, 3
    ON CONFLICT (day, site, dim, value) DO UPDATE SET pairs = EXCLUDED.pairs;
    UPDATE page_view_day_values SET pair_steps = tally_pair_steps(pairs) WHERE pairs <> '{}';
    DROP TABLE page_view_day_overlaps;
END
$$;

-- The pairs as rows under the table's old name and columns, for psql and for the release
-- before this one, whose web reads them until it is replaced; its cleanup deletes by
-- `first_bucket`, which now goes with the day's row (delete_old_rollups), so a delete here
-- does nothing.
CREATE OR REPLACE VIEW page_view_day_overlaps AS
SELECT d.site, d.dim, d.value,
       d.day::timestamp AT TIME ZONE 'UTC' + pair.first_slot * interval '15 minutes' AS first_bucket,
       (d.day - 1)::timestamp AT TIME ZONE 'UTC' + pair.prev_slot * interval '15 minutes' AS prev_last,
       pair.ids::bigint AS visitors
  FROM page_view_day_values d,
       unnest(d.pairs[:][1:1], d.pairs[:][2:2], d.pairs[:][3:3]) AS pair (first_slot, prev_slot, ids);

CREATE OR REPLACE FUNCTION tally_day_overlaps_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS day_overlaps_delete ON page_view_day_overlaps;
CREATE TRIGGER day_overlaps_delete INSTEAD OF DELETE ON page_view_day_overlaps
    FOR EACH ROW EXECUTE FUNCTION tally_day_overlaps_delete();
