-- Consumer-group ownership between instances: the instance holding a group's advisory
-- lock drives it. On taking the lock it moves owner_epoch up and records the URL
-- other instances forward the group's requests to; checkpoint and parked-event writes
-- name the epoch they were made under and are refused once it moved (fencing).

-- Epochs come from one sequence, so an epoch is never handed out twice, not even to a
-- group deleted and created again under the same name.
CREATE SEQUENCE cairn_group_owner_epochs;

ALTER TABLE consumer_groups
    ADD COLUMN owner_epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN owner_url   text;
