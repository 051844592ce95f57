-- V3: the outbox relay remembers how far it has published instead of marking each event.
--
-- Marking every event published cost an UPDATE per event: a new row version and new
-- entries in every index of job_events, three times per job. Now each event carries the
-- id of the transaction that wrote it (xid), and the relay publishes in (xid, id) order,
-- keeping one row with the last (xid, id) it has published. It reads only events whose
-- transaction is older than every transaction still running (the snapshot's xmin):
-- those sets can no longer grow, so nothing committed later can sort before the
-- progress and be skipped. See jobqueue.events.relay.

-- The events written so far read as xid 1, below every real transaction id: a constant
-- default needs no rewrite of the table, and an event that a transaction older than this
-- one writes after it commits (an operator replica not yet upgraded) still sorts after
-- them. Every later event gets its writer's xid.
ALTER TABLE job_events ADD COLUMN xid xid8 NOT NULL DEFAULT '1';
ALTER TABLE job_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
COMMENT ON COLUMN job_events.xid IS
  'The transaction that wrote the event; the relay publishes in (xid, id) order.';

-- The relay's reads and its backlog; purges look up a job's events by job_events_by_job.
CREATE INDEX job_events_relay_order ON job_events (xid, id);

CREATE TABLE outbox_progress (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  xid xid8 NOT NULL,
  event_id bigint NOT NULL,
  updated_at timestamptz NOT NULL  -- when the relay last moved it
);
COMMENT ON TABLE outbox_progress IS
  'One row: the (xid, id) of the last event the outbox relay published; later ones wait.';

-- Among the events written so far (all xid 1) the order is their id. What was published
-- stays published: the progress starts just before the oldest unpublished event (events
-- after it that were published already are sent again, which at-least-once delivery
-- allows).
INSERT INTO outbox_progress (xid, event_id, updated_at)
SELECT '1'::xid8,
       coalesce(
         (SELECT min(id) - 1 FROM job_events WHERE published_at IS NULL),
         (SELECT max(id) FROM job_events),
         0),
       now();

DROP INDEX job_events_unpublished;
ALTER TABLE job_events DROP COLUMN published_at;
