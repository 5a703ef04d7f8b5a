-- The subscription an item of billing_charge_item draws on (docs/design.md,
-- Deductions, Invariants 12 and 14), locked, always after its session:
-- the session's subscription; when that one is no longer ACTIVE (the user
-- paid, or was moved to another plan, while the session ran), the user's
-- ACTIVE one; its due period rolled. Returns NULL (the item answers BUSY)
-- when p_skip_held and a row it needs is held by another transaction (rows
-- this one locked are not skipped): a coalesced item is then charged on its
-- own instead of stalling the batch. Returns a row that is not ACTIVE when
-- the user has no live balance (cancelled, not yet replaced, PAST_DUE):
-- nothing is charged from it, the units are recorded unpaid. Runs under
-- billing_charge_many's plan settings.
CREATE OR REPLACE FUNCTION billing_charge_subscription(p_us usage_sessions, p_skip_held boolean, p_now timestamptz)
RETURNS subscriptions LANGUAGE plpgsql AS $$
DECLARE
  sub subscriptions;
  live subscriptions;
BEGIN
  IF p_skip_held THEN
    SELECT * INTO sub FROM subscriptions s WHERE s.id = p_us.subscription_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      RETURN NULL;
    END IF;
  ELSE
    SELECT * INTO sub FROM subscriptions s WHERE s.id = p_us.subscription_id FOR UPDATE;
  END IF;
  IF sub.status <> 'ACTIVE' THEN
    -- The balance now lives in the user's ACTIVE subscription. When a
    -- purchase commits while this statement waits for the row it replaces,
    -- that row no longer qualifies and the new one is not in this
    -- statement's snapshot: look again with a fresh snapshot (each statement
    -- takes one) instead of charging a REPLACED or CANCELLED row.
    IF p_skip_held THEN
      -- A batch does not wait for the live row either (a purchase or a
      -- capture holding it).
      SELECT * INTO live FROM subscriptions s WHERE s.user_id = p_us.user_id AND s.status = 'ACTIVE' FOR UPDATE SKIP LOCKED;
      IF NOT FOUND AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.user_id = p_us.user_id AND s.status = 'ACTIVE') THEN
        RETURN NULL;
      END IF;
    ELSE
      FOR attempt IN 1..3 LOOP
        SELECT * INTO live FROM subscriptions s WHERE s.user_id = p_us.user_id AND s.status = 'ACTIVE' FOR UPDATE;
        EXIT WHEN FOUND;
      END LOOP;
    END IF;
    IF live.id IS NULL THEN
      -- No live balance at all: the dead row, which pays nothing.
      RETURN sub;
    END IF;
    sub := live;
  END IF;
  IF p_now >= sub.period_end THEN
    PERFORM billing_roll_period(sub.id, p_now);
    SELECT * INTO sub FROM subscriptions s WHERE s.id = sub.id;
  END IF;
  RETURN sub;
END $$;
