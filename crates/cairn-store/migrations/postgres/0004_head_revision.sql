-- Schema version 4: the head row counts the transactions that wrote to the log.
--
-- Every transaction that writes streams, events or idempotency keys holds the
-- `cairn_head` row lock and adds one to `revision` before it commits (an append moves
-- `position` too; a stream delete moves only `revision`). A writer that remembers the
-- revision its own last commit left can tell, once it holds the lock again, whether
-- anything else was written in between: if the revision is the same, what it
-- remembers of the streams is still exactly what the database holds (see
-- src/postgres/writer.rs, "the cached path").

ALTER TABLE cairn_head ADD COLUMN revision bigint NOT NULL DEFAULT 0;

-- Locks the head row and fails the transaction, with SQLSTATE CRN01, unless the
-- revision is the one the caller expects.
CREATE FUNCTION cairn_lock_head_at(expected bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current bigint;
BEGIN
    SELECT revision INTO current FROM cairn_head WHERE id = 1 FOR UPDATE;
    IF current IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'the log was written since revision % (it is at %)', expected, current
            USING ERRCODE = 'CRN01';
    END IF;
END
$$;
