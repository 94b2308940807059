-- One row per transaction: a single-event append's row (~300 bytes of data).
\set stream random(1, 1000000000000)
INSERT INTO ceiling_events (id, stream_id, version, type, category, data, metadata, recorded_at)
VALUES (gen_random_uuid(), :stream, 1, 'Benchmarked', 'bench',
        '{"n":"' || lpad(to_hex(:stream), 16, '0') || '","pad":"' || repeat('x', 274) || '"}',
        '{}', (extract(epoch from clock_timestamp()) * 1000000)::bigint);
