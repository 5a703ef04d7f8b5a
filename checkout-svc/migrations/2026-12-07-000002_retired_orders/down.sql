DROP INDEX checkout_sessions_cancellation_pending_idx;
ALTER TABLE checkout_sessions DROP COLUMN order_cancellation;
DROP INDEX checkout_sessions_one_completed_per_order;
DROP INDEX checkout_sessions_order_idx;
-- Fails while several sessions carry one renewal order: delete the retired
-- ones first (keep the ACTIVE or COMPLETED one).
ALTER TABLE checkout_sessions ADD CONSTRAINT checkout_sessions_order_id_key UNIQUE (order_id);
