-- Consumer groups: their settings, their durable checkpoint, their parked events.

CREATE TABLE consumer_groups (
    name       text   PRIMARY KEY,
    settings   text   NOT NULL,              -- JSON written by cairn-store
    checkpoint bigint NOT NULL,              -- every matching event at or before it is done
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);

CREATE TABLE parked_events (
    group_name text    NOT NULL,
    position   bigint  NOT NULL,
    deliveries integer NOT NULL,
    reason     text    NOT NULL,
    parked_at  bigint  NOT NULL,
    replaying  boolean NOT NULL DEFAULT false,  -- true while a replay has it back in delivery
    PRIMARY KEY (group_name, position)
);
