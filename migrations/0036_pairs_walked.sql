-- A row's pairs and their steps worked out by walking the arrays (migrations/0031 wrote both as
-- queries: unnest, group, aggregate again), as migrations/0034 did for the cells. Every rollup
-- calls tally_pair_steps once for each row with pairs it writes, and tally_add_pairs for each
-- such row it adds to; as queries they cost about 45 us a call, SQL functions that cannot be
-- inlined: a minutely rollup of 1,000 views after 1M rolled up, its arriving ids back from the
-- day before, spent 78 ms of 293 in tally_pair_steps alone (pip). Walked: 308 -> 185 ms in all
-- (docs/BENCHMARKS.md, "Rollups smaller than what they roll up").
--
-- A row's pairs are {first_slot, prev_slot, ids} rows in (first_slot, prev_slot) order, one row
-- a pair of buckets: the rollup writes them so (array_agg ... ORDER BY bucket, prev_last over
-- rows grouped by both) and tally_add_pairs returns them so, pairs whose ids add up to zero left
-- out. Given rows out of order or a pair twice, nothing is lost: each row is kept or added to
-- another, and every reader sums (tally_day_overlaps, tally_pair_steps).

-- Two rows' pairs added up, pairs that come to nothing left out.
CREATE OR REPLACE FUNCTION tally_add_pairs(held integer[], added integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    result integer[] := '{}';
    pair integer[];
    i integer := 1;
    j integer := 1;
    held_rows integer := coalesce(array_length(held, 1), 0);
    added_rows integer := coalesce(array_length(added, 1), 0);
BEGIN
    WHILE i <= held_rows OR j <= added_rows LOOP
        IF j > added_rows OR (i <= held_rows AND (held[i][1], held[i][2]) < (added[j][1], added[j][2])) THEN
            pair := held[i:i][1:3];
            i := i + 1;
        ELSIF i > held_rows OR (added[j][1], added[j][2]) < (held[i][1], held[i][2]) THEN
            pair := added[j:j][1:3];
            j := j + 1;
        ELSE  -- the same two buckets in both
            pair := ARRAY[[held[i][1], held[i][2], held[i][3] + added[j][3]]];
            i := i + 1;
            j := j + 1;
        END IF;
        IF pair[1][3] <> 0 THEN
            result := result || pair;
        END IF;
    END LOOP;
    RETURN result;
END
$$;

-- A row's pairs as they count on a local day of 24 hours (migrations/0031 says how): 96 steps,
-- +ids at a pair's first slot + 1 and -ids at its slot the day before + 1, for the pairs whose
-- first slot is before the other; '{}' for no pairs.
CREATE OR REPLACE FUNCTION tally_pair_steps(pairs integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    steps integer[];
    first_slot integer;
    prev_slot integer;
BEGIN
    IF pairs = '{}' THEN
        RETURN '{}';
    END IF;
    steps := array_fill(0, ARRAY[96]);
    FOR i IN 1 .. coalesce(array_length(pairs, 1), 0) LOOP
        first_slot := pairs[i][1];
        prev_slot := pairs[i][2];
        IF first_slot < prev_slot THEN  -- only then can a local day of 24 hours hold both
            IF first_slot BETWEEN 0 AND 95 THEN
                steps[first_slot + 1] := steps[first_slot + 1] + pairs[i][3];
            END IF;
            IF prev_slot BETWEEN 0 AND 95 THEN
                steps[prev_slot + 1] := steps[prev_slot + 1] - pairs[i][3];
            END IF;
        END IF;
    END LOOP;
    RETURN steps;
END
$$;
