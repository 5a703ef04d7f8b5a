DROP TRIGGER checkout_sessions_events_update ON checkout_sessions;
DROP TRIGGER checkout_sessions_events ON checkout_sessions;
DROP TABLE event_versions;
DROP TABLE events;
DROP TABLE event_stream;
