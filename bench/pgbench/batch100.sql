-- One hundred rows per transaction: a 100-event batch append's rows.
\set stream random(1, 1000000000000)
INSERT INTO ceiling_events (id, stream_id, version, type, category, data, metadata, recorded_at)
SELECT ceiling_uuid_v7(), :stream, v, 'Benchmarked', 'bench',
       '{"n":"' || lpad(to_hex(:stream + v), 16, '0') || '","pad":"' || repeat('x', 274) || '"}',
       '{}', (extract(epoch from clock_timestamp()) * 1000000)::bigint
FROM generate_series(1, 100) AS v;
