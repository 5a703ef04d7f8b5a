-- The billing period of a subscription that contains `at`, without writing:
-- calendar months for the free plan; for paid plans, anniversary periods of
-- p_months months (1 monthly, 12 yearly) from the anchor: period k is
-- [anchor + k*p_months months, anchor + (k+1)*p_months months), computed from
-- the anchor each time, so month ends clamp (Jan 31 -> Feb 28/29 -> Mar 31;
-- Feb 29 -> Feb 28 -> ... -> Feb 29) and never drift. p_months defaults to
-- 1, so a caller that names three arguments (an older replica) gets months.
CREATE OR REPLACE FUNCTION billing_period_at(p_anchor timestamptz, p_calendar boolean, p_at timestamptz,
                                  p_months integer DEFAULT 1,
                                  OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  k integer;
  a timestamp;
  m integer := greatest(coalesce(p_months, 1), 1);
BEGIN
  IF p_calendar THEN
    period_start := date_trunc('month', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    period_end := (date_trunc('month', p_at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    RETURN;
  END IF;
  a := p_anchor AT TIME ZONE 'UTC';
  k := floor((extract(year FROM age(p_at AT TIME ZONE 'UTC', a)) * 12
              + extract(month FROM age(p_at AT TIME ZONE 'UTC', a))) / m)::integer;
  LOOP
    period_start := (a + make_interval(months => k * m)) AT TIME ZONE 'UTC';
    period_end := (a + make_interval(months => (k + 1) * m)) AT TIME ZONE 'UTC';
    EXIT WHEN period_start <= p_at AND p_at < period_end;
    IF period_start > p_at THEN k := k - 1; ELSE k := k + 1; END IF;
  END LOOP;
END $$;
