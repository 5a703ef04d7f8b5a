DROP TABLE IF EXISTS idempotency_keys, checkout_sessions;
DROP FUNCTION IF EXISTS touch_updated_at();
