-- The ceiling table: the same columns and indexes as Cairn's `events` table
-- (crates/cairn-store/migrations/postgres/0001_init.sql), without the head row, the
-- streams table or anything else Cairn does per append. pgbench inserts into it the
-- rows a `cairn bench append` run stores, so the two figures compare the database's
-- bare insert rate with what Cairn achieves on the same server in the same sitting.
-- Cairn gives events it names itself a UUIDv7 id: time-ordered, so `events_by_id` grows
-- at its right edge. gen_random_uuid() is a v4, random, which inserts all over that
-- index, more so the bigger it gets: the batch scripts' rows take v7 ids too (growing
-- one table through 8 pairs of 5-s slices of batch100.sql at 16 clients, v7 ran at
-- 0.90-1.45x v4, median 1.12; single.sql says why it keeps v4).
CREATE OR REPLACE FUNCTION ceiling_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
            || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14, 19))::uuid
$$;
DROP TABLE IF EXISTS ceiling_events;
CREATE TABLE ceiling_events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid   NOT NULL,
    stream_id   bigint NOT NULL,
    version     bigint NOT NULL,
    type        text   NOT NULL,
    category    text   COLLATE "C" NOT NULL,
    data        text   NOT NULL,
    metadata    text   NOT NULL,
    tags        text[],
    recorded_at bigint NOT NULL
);
CREATE UNIQUE INDEX ceiling_events_by_id ON ceiling_events (id);
CREATE UNIQUE INDEX ceiling_events_by_stream ON ceiling_events (stream_id, version);
CREATE INDEX ceiling_events_by_type ON ceiling_events (type, position);
CREATE INDEX ceiling_events_by_category ON ceiling_events (category, position);
