-- A day's cells and a fold's, added up by walking the two in step (migrations/0020 wrote it as a
-- query: unnest both, group by slot, aggregate again). Every rollup calls it once for each row of
-- page_view_day_values it adds to, and as a query it cost 20 us a call, most of that the call of
-- a SQL function that cannot be inlined: a third of a minutely rollup of 1,000 views (0.3M rolled
-- up before, pip). Walked here, 4 us (docs/BENCHMARKS.md, "Rollups").
--
-- Both arrays are {slot, views, firsts, lasts} rows in slot order, one row a slot: the rollup
-- writes them so (array_agg ... ORDER BY bucket over rows grouped by bucket), and this returns
-- them so. Cells whose three counts add up to zero are left out, as before. Given rows out of
-- order or a slot twice, nothing is lost: each row is kept or added to another, and every
-- reader sums the cells of a slot (unnest, then sum).
CREATE OR REPLACE FUNCTION tally_add_cells(held integer[], added integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    result integer[] := '{}';
    cell integer[];
    i integer := 1;
    j integer := 1;
    held_rows integer := coalesce(array_length(held, 1), 0);
    added_rows integer := coalesce(array_length(added, 1), 0);
BEGIN
    WHILE i <= held_rows OR j <= added_rows LOOP
        IF j > added_rows OR (i <= held_rows AND held[i][1] < added[j][1]) THEN
            cell := held[i:i][1:4];
            i := i + 1;
        ELSIF i > held_rows OR added[j][1] < held[i][1] THEN
            cell := added[j:j][1:4];
            j := j + 1;
        ELSE  -- the same slot in both
            cell := ARRAY[[held[i][1], held[i][2] + added[j][2], held[i][3] + added[j][3], held[i][4] + added[j][4]]];
            i := i + 1;
            j := j + 1;
        END IF;
        IF cell[1][2] <> 0 OR cell[1][3] <> 0 OR cell[1][4] <> 0 THEN
            result := result || cell;
        END IF;
    END LOOP;
    RETURN result;
END
$$;
