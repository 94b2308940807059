-- Consumer groups: their settings, their durable checkpoint, their parked events.

CREATE TABLE consumer_groups (
    name       TEXT    PRIMARY KEY,
    settings   TEXT    NOT NULL,             -- JSON written by cairn-store
    checkpoint INTEGER NOT NULL,             -- every matching event at or before it is done
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE parked_events (
    group_name TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    parked_at  INTEGER NOT NULL,
    replaying  INTEGER NOT NULL DEFAULT 0,   -- 1 while a replay has it back in delivery
    PRIMARY KEY (group_name, position)
) WITHOUT ROWID;
