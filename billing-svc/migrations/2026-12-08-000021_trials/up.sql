-- Trials (docs/design.md, "Catalogue"): a price version's `trial_days` lets
-- a user's first purchase start a free trial (BillingService StartTrial): an
-- ACTIVE subscription with `trial_end` set, no order, whose first period is
-- the trial [created, trial_end) and whose paid periods are anchored at
-- trial_end (anchor_at). It stays set after the conversion, as history.
ALTER TABLE subscriptions ADD COLUMN trial_end timestamptz;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_trial_check
  CHECK (trial_end IS NULL OR (order_id IS NULL AND NOT calendar_periods AND anchor_at = trial_end));
-- One trial per user and plan, ever, however many StartTrial calls race:
-- the second insert is a unique violation, whose retry answers the first.
CREATE UNIQUE INDEX subscriptions_one_trial_per_user_and_plan ON subscriptions (user_id, plan_id)
  WHERE trial_end IS NOT NULL;
