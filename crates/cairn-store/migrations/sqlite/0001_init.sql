-- Cairn embedded store, schema version 1.
-- Positions are assigned by the single writer (head + 1), so they are gapless and in
-- commit order; `events.position` is the rowid, so a global read is a range scan.

CREATE TABLE streams (
    stream_id  INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    version    INTEGER NOT NULL,             -- the last event's version
    position   INTEGER NOT NULL,             -- the last event's position
    created_at INTEGER NOT NULL,             -- microseconds since the epoch
    updated_at INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE events (
    position    INTEGER PRIMARY KEY,
    id          BLOB    NOT NULL,            -- 16-byte UUID
    stream_id   INTEGER NOT NULL REFERENCES streams (stream_id),
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    category    TEXT    NOT NULL,            -- the stream name before its first '-'
    data        TEXT    NOT NULL,            -- compact JSON
    metadata    TEXT    NOT NULL,            -- compact JSON object
    tags        TEXT,                        -- JSON array of strings, NULL when none
    recorded_at INTEGER NOT NULL             -- microseconds since the epoch
);

-- Every read path has its index: event id (de-duplication), stream reads, global
-- reads by type, by category and by tag.
CREATE UNIQUE INDEX events_by_id ON events (id);
CREATE UNIQUE INDEX events_by_stream ON events (stream_id, version);
CREATE INDEX events_by_type ON events (type, position);
CREATE INDEX events_by_category ON events (category, position);

CREATE TABLE event_tags (
    tag      TEXT    NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tag, position)
) WITHOUT ROWID;

-- Idempotency keys live in the same transaction as the events they produced.
CREATE TABLE idempotency_keys (
    key         TEXT    PRIMARY KEY,
    fingerprint BLOB    NOT NULL,
    response    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
