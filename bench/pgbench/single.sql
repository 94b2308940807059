-- One row per transaction: a single-event append's row (~300 bytes of data). Its id is
-- a random v4, not a v7 like Cairn's and the batch scripts' (schema.sql): per row, the
-- v7 function costs more than its ordered inserts save in a run of this size (64
-- clients, 5 s, 3 pairs: v7 at 0.86-0.95 of v4), so v4 is the tighter ceiling here.
\set stream random(1, 1000000000000)
INSERT INTO ceiling_events (id, stream_id, version, type, category, data, metadata, recorded_at)
VALUES (gen_random_uuid(), :stream, 1, 'Benchmarked', 'bench',
        '{"n":"' || lpad(to_hex(:stream), 16, '0') || '","pad":"' || repeat('x', 274) || '"}',
        '{}', (extract(epoch from clock_timestamp()) * 1000000)::bigint);
