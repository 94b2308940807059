-- Schema version 5: no foreign key from events to streams.
--
-- The key checked, for every event inserted, that its stream row exists: a trigger
-- running a query that locks the stream row, once per event. That was a quarter of
-- PostgreSQL's CPU per appended event. What it guarded holds by construction: the
-- writer and the import take every event's stream_id from the stream rows they write
-- or read in the same statement, a missing one leaves it NULL and fails the
-- transaction (stream_id is NOT NULL), and stream rows are never deleted (a deleted
-- stream is a row marked `deleted`). The tests check that no event lacks its stream.

ALTER TABLE events DROP CONSTRAINT events_stream_id_fkey;
