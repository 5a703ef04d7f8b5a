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
