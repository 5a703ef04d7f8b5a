-- Writes one event of the transaction's change (docs/design.md, "Events"),
-- called by the services' trigger functions at commit (deferred triggers),
-- so the event commits or rolls back with the change. Both services'
-- databases: this file is its one definition.
--
-- Stream order is (xid, seq). A reader hands out only events whose xid is
-- below every transaction still running, so an event that commits late can
-- never land behind a cursor. The entity's version row is locked here: a
-- second change of the same entity waits for this transaction, and its
-- event takes xid = greatest(its own xid, the last one's), so its position
-- follows this one and versions go up in stream order.
--
-- No NOTIFY here: PostgreSQL serializes the commits of notifying
-- transactions cluster-wide; the services wake their tails themselves.
CREATE OR REPLACE FUNCTION events_emit(p_type text, p_kind text, p_entity text, p_user text, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_version bigint;
  v_xid     xid8;
BEGIN
  INSERT INTO event_versions AS ev (entity_kind, entity_id, version, last_xid)
  VALUES (p_kind, p_entity, 1, pg_current_xact_id())
  ON CONFLICT (entity_kind, entity_id) DO UPDATE
    SET version = ev.version + 1, last_xid = greatest(ev.last_xid, pg_current_xact_id())
  RETURNING version, last_xid INTO v_version, v_xid;
  INSERT INTO events (xid, event_type, entity_kind, entity_id, entity_version, user_id, payload)
  VALUES (v_xid, p_type, p_kind, p_entity, v_version, coalesce(p_user, ''), p_payload);
END $$;
