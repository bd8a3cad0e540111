-- A referrer's domain (migrations/0005) ended at the first colon, so an IPv6 address came out
-- as "[2001" (every such referrer one row, and a filter on the address matched nothing), and
-- a host written with its final dot ("example.com.", as DNS allows) was a domain of its own,
-- and the site's own pages written so were not left out. The host is now a bracketed address
-- whole, or the name up to a port, without final dots. Rollups made before keep the old
-- domains until rebuilt (`rebuild_rollups`, jobs/rebuild.py).
CREATE OR REPLACE FUNCTION tally_referrer_domain(referrer text, site text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(
        regexp_replace(
            rtrim(lower(substring(referrer FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^]/?#]*\]|[^/?#:]+)')),
                  '.'),
            '^www\.', ''),
        regexp_replace(site, '^www\.', ''))
$$;
