-- Applies what is due for a subscription whose period ended
-- (billing_roll_steps: the one statement of what a period end does), the
-- caller holding its row lock, or inside a statement that does. Credits
-- left from each ended period expire through an EXPIRED ledger row, so
-- sum(ledger) == credits_granted - credits_remaining in every period. A
-- period opens at most once: after the first call nothing is due. Returns
-- whether anything changed.
CREATE OR REPLACE FUNCTION billing_roll_period(p_sub uuid, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  s subscriptions;
  st subscriptions;
  changed boolean := false;
BEGIN
  SELECT * INTO s FROM subscriptions WHERE id = p_sub;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  FOR st IN SELECT * FROM billing_roll_steps(s, p_now) LOOP
    IF s.credits_remaining > 0 THEN
      INSERT INTO ledger (subscription_id, period_start, kind, credits, created_at)
      VALUES (s.id, s.period_start, 'EXPIRED', s.credits_remaining, p_now);
    END IF;
    s := st;
    changed := true;
  END LOOP;
  IF changed THEN
    UPDATE subscriptions
       SET status = s.status, ended_at = s.ended_at, period_start = s.period_start, period_end = s.period_end,
           plan_id = s.plan_id, plan_version = s.plan_version, next_plan_version = s.next_plan_version, credits_granted = s.credits_granted, credits_remaining = s.credits_remaining, updated_at = p_now
     WHERE id = p_sub;
    -- A plan change scheduled for the period end is APPLIED once the
    -- subscription runs on its plan; one left open when a period opened on
    -- its own plan no longer applies, nor does an upgrade not paid within
    -- the period it was priced for (its late payment is refused as
    -- superseded). One of a subscription that ended here was cancelled by
    -- the trigger subscriptions_ended_changes, in the UPDATE above.
    UPDATE plan_changes c
       SET status = CASE WHEN c.timing = 'AT_PERIOD_END' AND c.to_plan_id = s.plan_id AND c.to_version = s.plan_version
                         THEN 'APPLIED' ELSE 'CANCELLED' END,
           applied_at = CASE WHEN c.timing = 'AT_PERIOD_END' AND c.to_plan_id = s.plan_id AND c.to_version = s.plan_version
                             THEN p_now END,
           updated_at = p_now
     WHERE c.subscription_id = p_sub AND c.status = 'OPEN'
       AND ((c.timing = 'AT_PERIOD_END' AND s.period_start >= c.period_end)
            OR (c.timing = 'IMMEDIATELY' AND p_now >= c.period_end));
  END IF;
  RETURN changed;
END $$;
