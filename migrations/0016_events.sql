-- Custom events (issue 18, part 2): what a page says its visitor did (signed up, bought,
-- downloaded), sent by tally.js's `tally.track(name, props)`, a click on an element with
-- `data-tally-event`, an outbound link, or a server. Props are what the site sends: strings,
-- numbers or booleans, never nested, never personal (README, "Events"). No address or user
-- agent, as for views: the visitor is the same keyed hash.
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL DEFAULT 'default'
        CHECK (site <> '' AND length(site) <= 253 AND site = lower(site)),
    name text NOT NULL CHECK (name <> '' AND length(name) <= 120),
    props jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(props) = 'object'),
    -- the page it happened on
    path text NOT NULL DEFAULT '/' CHECK (path LIKE '/%' AND length(path) <= 2048),
    visitor bigint,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    recorded_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
COMMENT ON TABLE events IS 'custom events of visitors; props are what the site sends, never personal data';
-- The rollup and the stats tail read the rows above the rollup watermark, as for page_views.
CREATE INDEX events_recorded_xid_idx ON events (recorded_xid);
-- Retention walks the oldest first; filtered reads take a window of them.
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
-- An id's events of a UTC day, for its visits.
CREATE INDEX events_visitor_idx ON events (site, visitor, occurred_at) WHERE visitor IS NOT NULL;

-- The distinct values each (site, event, prop) has had, at most MAX_PROP_VALUES of them
-- (tally/queries.sql, store_event): past that, a new value is stored as "(other)", so one
-- careless prop (an e-mail address, a timestamp) cannot fill the disk with distinct values.
CREATE TABLE event_prop_values (
    site text NOT NULL,
    name text NOT NULL,
    prop text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (site, name, prop, value)
);
