-- Subscription lifecycle (docs/design.md, "Subscription lifecycle"): every
-- paid period is paid for. A paid subscription whose period ends without a
-- captured renewal goes PAST_DUE (no credits) for a grace period, then
-- EXPIRED; it can be cancelled at period end or at once; payments can be
-- refunded.

-- States. PAST_DUE is still the user's live subscription (no free row may
-- appear beside it), so the one-per-user index covers both live states.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_status_check
  CHECK (status IN ('ACTIVE', 'PAST_DUE', 'CANCELLED', 'EXPIRED', 'REPLACED'));
ALTER TABLE subscriptions
  ADD COLUMN cancel_at_period_end boolean NOT NULL DEFAULT false,
  ADD COLUMN ended_at timestamptz;
-- Rows reconciliation cancelled before ended_at existed end when they were
-- last changed.
UPDATE subscriptions SET ended_at = updated_at WHERE status = 'CANCELLED' AND ended_at IS NULL;
ALTER TABLE subscriptions
  -- The saved payment method (the gateway's customer and recurring token)
  -- from the payment that bought the subscription, for automatic renewals.
  ADD COLUMN gateway_customer_id text,
  ADD COLUMN gateway_token_id text,
  ADD CONSTRAINT subscriptions_saved_method_check CHECK ((gateway_customer_id IS NULL) = (gateway_token_id IS NULL)),
  ADD CONSTRAINT subscriptions_ended_check CHECK ((status IN ('CANCELLED', 'EXPIRED')) = (ended_at IS NOT NULL));
DROP INDEX subscriptions_one_active_per_user;
CREATE UNIQUE INDEX subscriptions_one_live_per_user ON subscriptions (user_id) WHERE status IN ('ACTIVE', 'PAST_DUE');
DROP INDEX subscriptions_period_end_idx;
CREATE INDEX subscriptions_live_period_end_idx ON subscriptions (period_end) WHERE status IN ('ACTIVE', 'PAST_DUE');

-- Renewal orders: one per (subscription, period it pays for), created by the
-- renewal job on any replica (the unique constraint decides), without a
-- checkout session unless the customer pays it through a renewal checkout.
ALTER TABLE orders ALTER COLUMN checkout_session_id DROP NOT NULL;
ALTER TABLE orders
  ADD COLUMN renews_subscription_id uuid REFERENCES subscriptions(id),
  ADD COLUMN renews_period_start timestamptz,
  -- Automatic collection: attempts made and when the next one is due
  -- (NULL: not collected automatically, or no longer).
  ADD COLUMN charge_attempts integer NOT NULL DEFAULT 0 CHECK (charge_attempts >= 0),
  ADD COLUMN next_charge_at timestamptz,
  ADD COLUMN last_charge_error text,
  -- The payment a charge of the saved method produced, kept until it is
  -- captured: the next attempt asks the gateway about it instead of
  -- charging again.
  ADD COLUMN pending_payment_id text,
  ADD CONSTRAINT orders_renewal_check CHECK ((renews_subscription_id IS NULL) = (renews_period_start IS NULL)),
  ADD CONSTRAINT orders_origin_check CHECK (renews_subscription_id IS NOT NULL OR checkout_session_id IS NOT NULL),
  ADD CONSTRAINT orders_one_per_renewal_period UNIQUE (renews_subscription_id, renews_period_start);
CREATE INDEX orders_charge_due_idx ON orders (next_charge_at) WHERE status = 'CREATED' AND next_charge_at IS NOT NULL;

-- Credits leave a balance without usage when a period ends (EXPIRED) or a
-- subscription is cancelled at once (FORFEITED).
ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('USAGE', 'CARRY_OVER', 'EXPIRED', 'FORFEITED'));

-- Refunds, of an order's payment or of a discrepancy's. The id is the
-- caller's refund_id (idempotency). PENDING and PROCESSED refunds count
-- against the captured amount; a FAILED one gives its amount back.
CREATE TABLE refunds (
  id                 text PRIMARY KEY,
  payment_id         text NOT NULL,
  order_id           text REFERENCES orders(id),
  discrepancy_id     bigint REFERENCES payment_discrepancies(id),
  amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
  currency           text NOT NULL,
  status             text NOT NULL CHECK (status IN ('PENDING', 'PROCESSED', 'FAILED')),
  reason             text NOT NULL,
  gateway_refund_id  text UNIQUE,
  detail             text NOT NULL DEFAULT '',
  created_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL,
  CHECK (order_id IS NOT NULL OR discrepancy_id IS NOT NULL)
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);
CREATE INDEX refunds_order_idx ON refunds (order_id, created_at);
CREATE TRIGGER refunds_touch BEFORE UPDATE ON refunds FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Whether the period of `p_sub` starting at `p_period_start` is paid: its
-- renewal order is PAID, its payment is not money owed back (no
-- discrepancy recorded for it, e.g. the subscription was cancelled after the
-- renewal was paid) and it is not refunded in full.
CREATE FUNCTION billing_renewal_paid(p_sub uuid, p_period_start timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT EXISTS (
    SELECT 1 FROM orders o
     WHERE o.renews_subscription_id = p_sub AND o.renews_period_start = p_period_start AND o.status = 'PAID'
       AND NOT EXISTS (SELECT 1 FROM payment_discrepancies d WHERE d.payment_id = o.payment_id)
       AND o.amount_minor > coalesce((SELECT sum(r.amount_minor) FROM refunds r
                                       WHERE r.payment_id = o.payment_id AND r.status <> 'FAILED'), 0))
$$;

-- Opens what is due for a subscription whose period ended (the caller holds
-- its row lock, or the function runs inside a statement that does):
--   free (calendar months): the month containing p_now, its credits;
--   paid, with the renewal of the next period paid (billing_renewal_paid;
--     a cancellation at period end turns a paid renewal into money owed
--     back, so it does not open): that period,
--     anchored at the old period_end, with the plan's credits (repeated while
--     further periods are paid and over);
--   cancel_at_period_end (and nothing more paid): CANCELLED at period_end;
--   paid, no paid renewal: PAST_DUE, no credits (the renewal job retries the
--     charge and expires it after the grace period).
-- Credits left from the ended period expire through an EXPIRED ledger row,
-- so sum(ledger) == credits_granted - credits_remaining in every period.
-- Returns whether anything changed.
CREATE OR REPLACE FUNCTION billing_roll_period(p_sub uuid, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  s subscriptions;
  p record;
  grant_credits bigint;
  changed boolean := false;
BEGIN
  SELECT * INTO s FROM subscriptions WHERE id = p_sub;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT credits_per_period INTO grant_credits FROM plans WHERE id = s.plan_id;
  WHILE s.status IN ('ACTIVE', 'PAST_DUE') AND p_now >= s.period_end LOOP
    IF s.credits_remaining > 0 THEN
      INSERT INTO ledger (subscription_id, period_start, kind, credits, created_at)
      VALUES (s.id, s.period_start, 'EXPIRED', s.credits_remaining, p_now);
      s.credits_remaining := 0;
      changed := true;
    END IF;
    IF s.calendar_periods THEN
      SELECT * INTO p FROM billing_period_at(s.anchor_at, true, p_now);
      s.period_start := p.period_start;
      s.period_end := p.period_end;
      s.credits_granted := grant_credits;
      s.credits_remaining := grant_credits;
      changed := true;
    ELSIF billing_renewal_paid(s.id, s.period_end) THEN
      SELECT * INTO p FROM billing_period_at(s.anchor_at, false, s.period_end);
      s.period_start := p.period_start;
      s.period_end := p.period_end;
      s.credits_granted := grant_credits;
      s.credits_remaining := grant_credits;
      s.status := 'ACTIVE';
      changed := true;
    ELSIF s.cancel_at_period_end THEN
      s.status := 'CANCELLED';
      s.ended_at := s.period_end;
      changed := true;
    ELSE
      IF s.status = 'ACTIVE' THEN
        s.status := 'PAST_DUE';
        changed := true;
      END IF;
      EXIT;
    END IF;
  END LOOP;
  IF changed THEN
    UPDATE subscriptions
       SET status = s.status, ended_at = s.ended_at, period_start = s.period_start, period_end = s.period_end,
           credits_granted = s.credits_granted, credits_remaining = s.credits_remaining, updated_at = p_now
     WHERE id = p_sub;
  END IF;
  RETURN changed;
END $$;

-- The renewal job's charges of saved payment methods are a capture path
-- too. A renewal paid for a period the subscription will not have (it was
-- cancelled now, fully refunded or replaced first) is money that buys
-- nothing: a SUBSCRIPTION_ENDED discrepancy, refunded by reconcile --fix.
ALTER TABLE payment_discrepancies DROP CONSTRAINT payment_discrepancies_source_check;
ALTER TABLE payment_discrepancies ADD CONSTRAINT payment_discrepancies_source_check
  CHECK (source IN ('VERIFY_PAYMENT', 'WEBHOOK', 'RECONCILE', 'RENEWAL_CHARGE', 'SUBSCRIPTION_ENDED'));
ALTER TABLE payment_discrepancies DROP CONSTRAINT payment_discrepancies_kind_check;
ALTER TABLE payment_discrepancies ADD CONSTRAINT payment_discrepancies_kind_check
  CHECK (kind IN ('ORDER_SUPERSEDED', 'ORDER_CANCELLED', 'SECOND_PAYMENT', 'AMOUNT_MISMATCH', 'UNKNOWN_ORDER',
                  'RECORDED_BEFORE_CLASSIFICATION', 'SUBSCRIPTION_ENDED'));
