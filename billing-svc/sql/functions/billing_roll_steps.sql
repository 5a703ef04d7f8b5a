-- What a subscription's period ends up to p_now do to it (docs/design.md,
-- Subscription lifecycle), one state per period end applied, in order; none
-- when nothing is due. The one statement of the rule: billing_roll_period
-- applies the states under the row lock (and writes the ledger rows of the
-- credits each one expires), reads show the last one without writing
-- (subscriptions::as_of). Writes nothing. At each period end:
--   leftover credits expire (the state after it has none left);
--   free (calendar months): the month containing p_now, with the credits of
--     the plan's current version, which the month is pinned to (nothing was
--     bought, so nothing is kept: docs/design.md, "Catalogue");
--   paid, with the renewal of the next period paid (billing_renewal_paid;
--     a cancellation at period end turns a paid renewal into money owed
--     back, so it does not open): that period, anchored at the old
--     period_end and as long as the pinned version's period (a month or a
--     year from the anchor: billing_period_at), pinned to the version its
--     renewal order charged (the subscription's, or the one a migration
--     scheduled before the order was opened: next_plan_version, cleared
--     once reached), or to the plan and version of a plan change scheduled
--     for the period end (the renewal order charged the new plan), with
--     that version's credits (repeated while further periods are paid and
--     over);
--   cancel_at_period_end (and nothing more paid): CANCELLED at period_end;
--   paid, no paid renewal: PAST_DUE, no credits (the renewal job retries the
--     charge and expires it after the grace period).
CREATE OR REPLACE FUNCTION billing_roll_steps(s subscriptions, p_now timestamptz) RETURNS SETOF subscriptions
LANGUAGE plpgsql STABLE AS $$
DECLARE
  p record;
  grant_credits bigint;
  months integer;
  paid_version integer;
  paid_plan text;
  plan_changed boolean;
  free_version integer;
  free_credits bigint;
  expired bigint;
BEGIN
  SELECT v.credits_per_period, CASE v.period WHEN 'yearly' THEN 12 ELSE 1 END INTO grant_credits, months
    FROM plan_versions v WHERE v.plan_id = s.plan_id AND v.version = s.plan_version;
  IF s.calendar_periods THEN
    SELECT v.version, v.credits_per_period INTO free_version, free_credits
      FROM plans pl JOIN plan_versions v ON v.plan_id = pl.id AND v.version = pl.current_version
     WHERE pl.id = s.plan_id;
  END IF;
  WHILE s.status IN ('ACTIVE', 'PAST_DUE') AND p_now >= s.period_end LOOP
    expired := s.credits_remaining;
    s.credits_remaining := 0;
    IF s.calendar_periods THEN
      SELECT * INTO p FROM billing_period_at(s.anchor_at, true, p_now);
      s.period_start := p.period_start;
      s.period_end := p.period_end;
      s.plan_version := free_version;
      s.credits_granted := free_credits;
      s.credits_remaining := free_credits;
    ELSIF billing_renewal_paid(s.id, s.period_end) THEN
      SELECT o.plan_id, o.plan_version INTO paid_plan, paid_version FROM orders o
       WHERE o.renews_subscription_id = s.id AND o.renews_period_start = s.period_end AND o.status = 'PAID';
      -- A plan change scheduled for the period end (of the same period
      -- length): the renewal paid the new plan; a migration of the old
      -- plan no longer applies.
      plan_changed := paid_plan IS NOT NULL AND paid_plan <> s.plan_id;
      IF plan_changed THEN
        s.plan_id := paid_plan;
        s.next_plan_version := NULL;
      END IF;
      IF paid_version IS NOT NULL AND (plan_changed OR paid_version <> s.plan_version) THEN
        s.plan_version := paid_version;
        SELECT v.credits_per_period, CASE v.period WHEN 'yearly' THEN 12 ELSE 1 END INTO grant_credits, months
          FROM plan_versions v WHERE v.plan_id = s.plan_id AND v.version = s.plan_version;
      END IF;
      IF s.next_plan_version = s.plan_version THEN
        s.next_plan_version := NULL;
      END IF;
      SELECT * INTO p FROM billing_period_at(s.anchor_at, false, s.period_end, months);
      s.period_start := p.period_start;
      s.period_end := p.period_end;
      s.credits_granted := grant_credits;
      s.credits_remaining := grant_credits;
      s.status := 'ACTIVE';
    ELSIF s.cancel_at_period_end THEN
      s.status := 'CANCELLED';
      s.ended_at := s.period_end;
    ELSE
      IF s.status = 'ACTIVE' THEN
        s.status := 'PAST_DUE';
        RETURN NEXT s;
      ELSIF expired > 0 THEN
        RETURN NEXT s;
      END IF;
      EXIT;
    END IF;
    RETURN NEXT s;
  END LOOP;
END $$;
