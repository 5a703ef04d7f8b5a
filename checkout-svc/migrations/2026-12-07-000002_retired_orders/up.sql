-- Orders of retired checkout sessions (docs/design.md, Invariants 26 and 27).

-- A renewal order is handed to every checkout the customer comes back with
-- (a second CreateSession, RecoverSession, RenewSession back to the plan),
-- so several sessions of one user may carry it; one ACTIVE session per user
-- still means one ACTIVE carrier. One payment completes one session.
ALTER TABLE checkout_sessions DROP CONSTRAINT checkout_sessions_order_id_key;
CREATE INDEX checkout_sessions_order_idx ON checkout_sessions (order_id);
CREATE UNIQUE INDEX checkout_sessions_one_completed_per_order ON checkout_sessions (order_id) WHERE status = 'COMPLETED';

-- The outbox of order cancellations: set PENDING in the transaction that
-- retires a session, CONFIRMED once billing answered CancelOrders (the call
-- runs after commit; the completion-sync job finishes what it missed).
ALTER TABLE checkout_sessions ADD COLUMN order_cancellation text
  CHECK (order_cancellation IN ('PENDING', 'CONFIRMED'));
CREATE INDEX checkout_sessions_cancellation_pending_idx ON checkout_sessions (id) WHERE order_cancellation = 'PENDING';

-- Sessions retired before this rule: invalidated ones, and expired ones a
-- newer session of the user superseded. Their orders are cancelled by the
-- next completion-sync run (a paid one completes its session instead).
UPDATE checkout_sessions s SET order_cancellation = 'PENDING'
 WHERE s.status = 'INVALIDATED'
    OR (s.status = 'EXPIRED'
        AND EXISTS (SELECT 1 FROM checkout_sessions n WHERE n.user_id = s.user_id AND n.created_at > s.created_at));
