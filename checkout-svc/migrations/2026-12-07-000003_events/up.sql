-- The event stream (docs/design.md, "Events"): the outbox rows, written by
-- triggers in the transaction of the change they describe.
--
-- event_stream: one row. `epoch` names this copy of the stream: cursors
-- carry it, and a cursor of another epoch is CURSOR_EXPIRED. `purged_*` is
-- the last position the retention job deleted (a cursor there is still
-- good: nothing after it was deleted).
CREATE TABLE event_stream (
  singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  epoch            bigint NOT NULL,
  purged_xid       xid8 NOT NULL DEFAULT '0',
  purged_seq       bigint NOT NULL DEFAULT 0,
  purged_event_id  uuid
);
INSERT INTO event_stream (epoch) VALUES (floor(random() * 9007199254740990)::bigint + 1);

CREATE TABLE events (
  xid             xid8 NOT NULL,
  seq             bigint GENERATED ALWAYS AS IDENTITY,
  event_id        uuid NOT NULL DEFAULT gen_random_uuid(),
  event_type      text NOT NULL,
  occurred_at     timestamptz NOT NULL DEFAULT now(),
  entity_kind     text NOT NULL,
  entity_id       text NOT NULL,
  entity_version  bigint NOT NULL CHECK (entity_version > 0),
  user_id         text NOT NULL,
  payload         jsonb NOT NULL,
  PRIMARY KEY (xid, seq)
);

-- The last version of each entity, and the stream position (xid) its last
-- event took: a newer event of the entity is placed after it.
CREATE TABLE event_versions (
  entity_kind  text NOT NULL,
  entity_id    text NOT NULL,
  version      bigint NOT NULL,
  last_xid     xid8 NOT NULL,
  PRIMARY KEY (entity_kind, entity_id)
);

ALTER TABLE events ADD CONSTRAINT events_type_known CHECK (event_type IN (
  'SESSION_CREATED', 'SESSION_RECOVERED', 'SESSION_COMPLETED', 'SESSION_EXPIRED', 'SESSION_INVALIDATED'));

-- Deferred constraint triggers: they run at commit and read the row as the
-- transaction commits it; bookkeeping updates (updated_at, the order
-- cancellation outbox) queue nothing. The function lives in sql/functions/.
CREATE CONSTRAINT TRIGGER checkout_sessions_events AFTER INSERT ON checkout_sessions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION checkout_session_events();
CREATE CONSTRAINT TRIGGER checkout_sessions_events_update AFTER UPDATE ON checkout_sessions DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION checkout_session_events();
