-- checkout-svc schema: checkout sessions (never billing's tables).

-- The trigger below call touch_updated_at(), whose one definition is
-- shared/sql/functions/touch_updated_at.sql: the migration runner creates it
-- before pending migrations run (docs/design.md, SQL functions).

CREATE TABLE checkout_sessions (
  id               uuid PRIMARY KEY,
  user_id          text NOT NULL,
  plan_id          text NOT NULL,
  status           text NOT NULL CHECK (status IN ('ACTIVE', 'COMPLETED', 'EXPIRED', 'INVALIDATED')),
  amount_minor     bigint NOT NULL CHECK (amount_minor >= 0),  -- price snapshot from billing
  currency         char(3) NOT NULL,
  order_id         text NOT NULL UNIQUE,                      -- gateway order (billing)
  expires_at       timestamptz NOT NULL,
  completed_at     timestamptz,
  replaced_by      uuid REFERENCES checkout_sessions(id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
  recovered_from   uuid REFERENCES checkout_sessions(id) ON DELETE SET NULL,
  subscription_id  text,
  payment_id       text,
  created_at       timestamptz NOT NULL,
  updated_at       timestamptz NOT NULL,
  CHECK ((status = 'COMPLETED') = (completed_at IS NOT NULL AND subscription_id IS NOT NULL))
);
-- At most one ACTIVE session per user (docs/design.md, Invariants 1).
CREATE UNIQUE INDEX checkout_sessions_one_active_per_user ON checkout_sessions (user_id) WHERE status = 'ACTIVE';
-- Recovering twice yields the same session: one recovery per source.
CREATE UNIQUE INDEX checkout_sessions_recovered_from_uniq ON checkout_sessions (recovered_from) WHERE recovered_from IS NOT NULL;
CREATE INDEX checkout_sessions_user_status_idx ON checkout_sessions (user_id, status);
CREATE INDEX checkout_sessions_status_updated_idx ON checkout_sessions (status, updated_at);
CREATE INDEX checkout_sessions_created_idx ON checkout_sessions (created_at);
CREATE INDEX checkout_sessions_user_created_idx ON checkout_sessions (user_id, created_at DESC, id DESC);
CREATE TRIGGER checkout_sessions_touch BEFORE UPDATE ON checkout_sessions
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Idempotency keys (docs/design.md, Idempotency): stored with the effect, in its transaction.
CREATE TABLE idempotency_keys (
  method        text NOT NULL,
  key           text NOT NULL,
  request_hash  bytea NOT NULL,
  response      bytea NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (method, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
