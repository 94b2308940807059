-- Cairn on PostgreSQL, schema version 1: the log.
--
-- Positions are NOT taken from a sequence. Every append transaction first locks the
-- single row of `cairn_head` (SELECT ... FOR UPDATE), reads the head from it, writes
-- its events at head + 1, head + 2, ... and stores the new head in the same row before
-- it commits. The row lock serialises appenders of every Cairn instance until commit,
-- so positions are gapless and commit order is position order: a reader can never see
-- position N + 1 before position N (see src/postgres/mod.rs).

CREATE TABLE cairn_head (
    id          smallint PRIMARY KEY CHECK (id = 1),
    position    bigint   NOT NULL,           -- the last committed position (0: empty log)
    recorded_at bigint   NOT NULL            -- the last batch's timestamp, so recorded_at
                                             -- never goes backwards along the log even
                                             -- when instances' clocks disagree
);
INSERT INTO cairn_head (id, position, recorded_at) VALUES (1, 0, 0);

CREATE TABLE streams (
    stream_id  bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text    COLLATE "C" NOT NULL UNIQUE,  -- byte order for listing by prefix
    version    bigint  NOT NULL,                     -- the last event's version
    position   bigint  NOT NULL,                     -- the last event's position
    created_at bigint  NOT NULL,                     -- microseconds since the epoch
    updated_at bigint  NOT NULL,
    deleted    boolean NOT NULL DEFAULT false
);

CREATE TABLE events (
    position    bigint PRIMARY KEY,
    id          uuid   NOT NULL,
    stream_id   bigint NOT NULL REFERENCES streams (stream_id),
    version     bigint NOT NULL,
    type        text   NOT NULL,
    category    text   COLLATE "C" NOT NULL,  -- the stream name before its first '-'
    data        text   NOT NULL,              -- compact JSON, kept byte for byte
    metadata    text   NOT NULL,              -- compact JSON object
    tags        text[],                       -- NULL when none
    recorded_at bigint NOT NULL               -- microseconds since the epoch
);

-- Every read path has its index: event id (de-duplication), stream reads, global
-- reads by type, by category and by tag.
CREATE UNIQUE INDEX events_by_id ON events (id);
CREATE UNIQUE INDEX events_by_stream ON events (stream_id, version);
CREATE INDEX events_by_type ON events (type, position);
CREATE INDEX events_by_category ON events (category, position);

CREATE TABLE event_tags (
    tag      text   NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tag, position)
);

-- Idempotency keys are written in the same transaction as the events they produced.
CREATE TABLE idempotency_keys (
    key         text   PRIMARY KEY,
    fingerprint bytea  NOT NULL,
    response    text   NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
