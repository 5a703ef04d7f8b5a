-- billing-svc schema. Money is bigint minor units; times are timestamptz (UTC).

-- The triggers below call touch_updated_at(), whose one definition is
-- shared/sql/functions/touch_updated_at.sql: the migration runner creates it
-- before pending migrations run (docs/design.md, SQL functions).

CREATE TABLE plans (
  id                          text PRIMARY KEY,
  name                        text NOT NULL,
  price_minor                 bigint NOT NULL CHECK (price_minor >= 0),
  currency                    char(3) NOT NULL,
  period                      text NOT NULL DEFAULT 'monthly' CHECK (period = 'monthly'),
  credits_per_period          bigint NOT NULL CHECK (credits_per_period >= 0),
  deduction_interval_seconds  integer NOT NULL DEFAULT 600 CHECK (deduction_interval_seconds > 0),
  max_sessions_per_period     integer NOT NULL DEFAULT 0 CHECK (max_sessions_per_period >= 0),
  max_minutes_per_period      integer NOT NULL DEFAULT 0 CHECK (max_minutes_per_period >= 0),
  max_upload_bytes            bigint NOT NULL DEFAULT 0 CHECK (max_upload_bytes >= 0),
  active                      boolean NOT NULL DEFAULT true,
  created_at                  timestamptz NOT NULL DEFAULT now()
);

-- Demo plans: a free plan (given to every user on first use) and two paid ones.
INSERT INTO plans (id, name, price_minor, currency, credits_per_period, deduction_interval_seconds,
                   max_sessions_per_period, max_minutes_per_period, max_upload_bytes) VALUES
  ('free',          'Free',    0,      'INR', 30,   600, 5,  60,   10485760),
  ('basic-monthly', 'Basic',   49900,  'INR', 300,  600, 30, 600,  104857600),
  ('pro-monthly',   'Pro',     149900, 'INR', 1500, 600, 0,  3000, 1073741824);

CREATE TABLE orders (
  id                   text PRIMARY KEY,
  checkout_session_id  uuid NOT NULL UNIQUE,            -- one order per checkout session
  user_id              text NOT NULL,
  plan_id              text NOT NULL REFERENCES plans(id),
  amount_minor         bigint NOT NULL CHECK (amount_minor >= 0),
  currency             char(3) NOT NULL,
  status               text NOT NULL DEFAULT 'CREATED' CHECK (status IN ('CREATED', 'PAID')),
  payment_id           text UNIQUE,                     -- one captured payment per order
  paid_at              timestamptz,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  CHECK ((status = 'PAID') = (payment_id IS NOT NULL AND paid_at IS NOT NULL))
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC);
CREATE INDEX orders_status_idx ON orders (status, updated_at);
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE subscriptions (
  id                 uuid PRIMARY KEY,
  user_id            text NOT NULL,
  plan_id            text NOT NULL REFERENCES plans(id),
  order_id           text UNIQUE REFERENCES orders(id),  -- one subscription per paid order; NULL for free
  status             text NOT NULL CHECK (status IN ('ACTIVE', 'REPLACED', 'CANCELLED')),
  -- Anniversary anchor for paid plans; free plans use calendar months.
  anchor_at          timestamptz NOT NULL,
  calendar_periods   boolean NOT NULL DEFAULT false,
  period_start       timestamptz NOT NULL,
  period_end         timestamptz NOT NULL,
  credits_granted    bigint NOT NULL CHECK (credits_granted >= 0),
  credits_remaining  bigint NOT NULL CHECK (credits_remaining >= 0),
  replaced_by        uuid REFERENCES subscriptions(id),
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  CHECK (period_start < period_end),
  CHECK (credits_remaining <= credits_granted)
);
-- At most one ACTIVE subscription per user (docs/design.md, Invariants 6).
CREATE UNIQUE INDEX subscriptions_one_active_per_user ON subscriptions (user_id) WHERE status = 'ACTIVE';
CREATE INDEX subscriptions_user_idx ON subscriptions (user_id, created_at DESC);
CREATE INDEX subscriptions_period_end_idx ON subscriptions (period_end) WHERE status = 'ACTIVE';
CREATE TRIGGER subscriptions_touch BEFORE UPDATE ON subscriptions FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Gateway webhook inbox: one row per event id, processed or not.
CREATE TABLE webhook_events (
  event_id      text PRIMARY KEY,
  event_type    text NOT NULL,
  body          bytea NOT NULL,
  order_id      text,
  outcome       text NOT NULL,   -- PROCESSED | IGNORED | DISCREPANCY
  detail        text NOT NULL DEFAULT '',
  received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_outcome_idx ON webhook_events (outcome) WHERE outcome = 'DISCREPANCY';

CREATE TABLE usage_sessions (
  id                          uuid PRIMARY KEY,
  user_id                     text NOT NULL,
  subscription_id             uuid NOT NULL REFERENCES subscriptions(id),
  kind                        text NOT NULL CHECK (kind IN ('TEXT', 'CALL')),
  status                      text NOT NULL CHECK (status IN ('ACTIVE', 'ENDED')),
  started_at                  timestamptz NOT NULL,
  ended_at                    timestamptz,
  deduction_interval_seconds  integer NOT NULL CHECK (deduction_interval_seconds > 0),
  auto_deductions_processed   bigint NOT NULL DEFAULT 0 CHECK (auto_deductions_processed >= 0),
  manual_deductions           bigint NOT NULL DEFAULT 0,
  next_unit_index             bigint NOT NULL DEFAULT 0,
  units_charged               bigint NOT NULL DEFAULT 0 CHECK (units_charged >= 0),
  units_unpaid                bigint NOT NULL DEFAULT 0 CHECK (units_unpaid >= 0),
  final_units_charged         bigint,
  created_at                  timestamptz NOT NULL DEFAULT now(),
  updated_at                  timestamptz NOT NULL DEFAULT now(),
  CHECK ((status = 'ENDED') = (ended_at IS NOT NULL))
);
CREATE INDEX usage_sessions_user_started_idx ON usage_sessions (user_id, started_at);
CREATE INDEX usage_sessions_active_idx ON usage_sessions (started_at) WHERE status = 'ACTIVE';
CREATE INDEX usage_sessions_subscription_idx ON usage_sessions (subscription_id);

-- Every credit that leaves a balance has a row here (docs/design.md, Invariants 10).
CREATE TABLE ledger (
  id                bigserial PRIMARY KEY,
  subscription_id   uuid NOT NULL REFERENCES subscriptions(id),
  period_start      timestamptz NOT NULL,
  usage_session_id  uuid REFERENCES usage_sessions(id),
  unit_index        bigint,
  kind              text NOT NULL CHECK (kind IN ('USAGE', 'CARRY_OVER')),
  credits           bigint NOT NULL CHECK (credits > 0),
  created_at        timestamptz NOT NULL DEFAULT now(),
  UNIQUE (usage_session_id, unit_index),
  CHECK ((kind = 'USAGE') = (usage_session_id IS NOT NULL AND unit_index IS NOT NULL))
);
CREATE INDEX ledger_subscription_period_idx ON ledger (subscription_id, period_start);

-- Explicit Deduct calls, idempotent on the caller's deduction id.
CREATE TABLE deductions (
  usage_session_id  uuid NOT NULL REFERENCES usage_sessions(id),
  deduction_id      text NOT NULL,
  units             bigint NOT NULL,
  units_charged     bigint NOT NULL,
  units_unpaid      bigint NOT NULL,
  created_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (usage_session_id, deduction_id)
);

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

-- One row per repair made by `reconcile --fix`.
CREATE TABLE reconcile_audit (
  id          bigserial PRIMARY KEY,
  kind        text NOT NULL,
  subject_id  text NOT NULL,
  action      text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- Daily usage rollup per plan (the statistics job).
CREATE TABLE usage_stats_daily (
  day        date NOT NULL,
  plan_id    text NOT NULL,
  sessions   bigint NOT NULL,
  minutes    bigint NOT NULL,
  credits    bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (day, plan_id)
);
