-- The billing period of a subscription that contains `at`, without writing:
-- calendar months for the free plan, anniversary months from the anchor for
-- paid plans (computed from the anchor each time so month ends never drift).
CREATE OR REPLACE FUNCTION billing_period_at(p_anchor timestamptz, p_calendar boolean, p_at timestamptz,
                                  OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  k integer;
  a timestamp;
BEGIN
  IF p_calendar THEN
    period_start := date_trunc('month', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    period_end := (date_trunc('month', p_at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    RETURN;
  END IF;
  a := p_anchor AT TIME ZONE 'UTC';
  k := (extract(year FROM age(p_at AT TIME ZONE 'UTC', a)) * 12
        + extract(month FROM age(p_at AT TIME ZONE 'UTC', a)))::integer;
  LOOP
    period_start := (a + make_interval(months => k)) AT TIME ZONE 'UTC';
    period_end := (a + make_interval(months => k + 1)) AT TIME ZONE 'UTC';
    EXIT WHEN period_start <= p_at AND p_at < period_end;
    IF period_start > p_at THEN k := k - 1; ELSE k := k + 1; END IF;
  END LOOP;
END $$;
