-- Billing-period rollover and the one deduction path, as server-side
-- functions: each runs as one statement (one round trip, one transaction).

-- Moves an ACTIVE subscription's period forward so that it contains p_now and
-- grants the plan's credits for the new period. The caller holds the row lock
-- (SELECT ... FOR UPDATE); a period is opened at most once because the
-- condition p_now >= period_end is false after the first call.
CREATE FUNCTION billing_roll_period(p_sub uuid, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  s subscriptions;
  k integer;
  a timestamp;
  new_start timestamptz;
  new_end timestamptz;
  grant_credits bigint;
BEGIN
  SELECT * INTO s FROM subscriptions WHERE id = p_sub;
  IF NOT FOUND OR s.status <> 'ACTIVE' OR p_now < s.period_end THEN
    RETURN false;
  END IF;
  IF s.calendar_periods THEN
    new_start := date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    new_end := (date_trunc('month', p_now AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
  ELSE
    -- Anniversary periods: [anchor + k months, anchor + k+1 months), computed
    -- from the anchor each time so month-end clamping never drifts.
    a := s.anchor_at AT TIME ZONE 'UTC';
    k := (extract(year FROM age(p_now AT TIME ZONE 'UTC', a)) * 12
          + extract(month FROM age(p_now AT TIME ZONE 'UTC', a)))::integer;
    LOOP
      new_start := (a + make_interval(months => k)) AT TIME ZONE 'UTC';
      new_end := (a + make_interval(months => k + 1)) AT TIME ZONE 'UTC';
      EXIT WHEN new_start <= p_now AND p_now < new_end;
      IF new_start > p_now THEN k := k - 1; ELSE k := k + 1; END IF;
    END LOOP;
  END IF;
  SELECT credits_per_period INTO grant_credits FROM plans WHERE id = s.plan_id;
  UPDATE subscriptions
     SET period_start = new_start, period_end = new_end,
         credits_granted = grant_credits, credits_remaining = grant_credits,
         updated_at = p_now
   WHERE id = p_sub;
  RETURN true;
END $$;

-- The one code path that changes a balance (docs/design.md, Deductions).
--
-- Locks the usage session, then its subscription (always in that order),
-- works out how many units to charge from the fresh rows, writes one ledger
-- row per paid unit (UNIQUE(usage_session_id, unit_index)) and lowers the
-- balance in the same transaction. Units the balance cannot cover are
-- recorded as unpaid on the session, never lost and never negative.
--
-- p_mode:
--   AUTO     charge the complete intervals elapsed since the last auto charge
--   EXPLICIT the caller's per-interval deduction (Deduct): charge p_units,
--            idempotent on p_deduction_id; the units count as processed
--            intervals, so neither the job nor END charges them again
--   END      end the session: max(0, ceil(duration/interval) - auto) + p_units
-- Returns jsonb: {error}, {skipped} (AUTO only) or
-- {charged, unpaid, replayed, session: {...}, credits_remaining}.
CREATE FUNCTION billing_charge(p_session uuid, p_mode text, p_units bigint, p_deduction_id text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  us usage_sessions;
  sub subscriptions;
  due bigint := 0;
  elapsed_units bigint;
  paid bigint;
  prior deductions;
  replayed boolean := false;
  moved boolean := false;
BEGIN
  IF p_mode = 'AUTO' THEN
    -- The job never waits: a session someone else holds (an End, a Deduct,
    -- another replica's job) is skipped and picked up on the next tick.
    SELECT * INTO us FROM usage_sessions WHERE id = p_session FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      RETURN jsonb_build_object('skipped', true);
    END IF;
  ELSE
    SELECT * INTO us FROM usage_sessions WHERE id = p_session FOR UPDATE;
    IF NOT FOUND THEN
      RETURN jsonb_build_object('error', 'NOT_FOUND');
    END IF;
  END IF;

  IF p_mode = 'AUTO' THEN
    IF us.status <> 'ACTIVE' THEN
      due := 0;
    ELSE
      elapsed_units := floor(extract(epoch FROM (p_now - us.started_at)) / us.deduction_interval_seconds)::bigint;
      due := greatest(0, elapsed_units - us.auto_deductions_processed);
      us.auto_deductions_processed := us.auto_deductions_processed + due;
    END IF;
  ELSIF p_mode = 'EXPLICIT' THEN
    SELECT * INTO prior FROM deductions WHERE usage_session_id = p_session AND deduction_id = p_deduction_id;
    IF FOUND THEN
      IF prior.units <> p_units THEN
        RETURN jsonb_build_object('error', 'DEDUCTION_ID_REUSED');
      END IF;
      SELECT * INTO sub FROM subscriptions WHERE id = us.subscription_id;
      RETURN jsonb_build_object('charged', prior.units_charged, 'unpaid', prior.units_unpaid, 'replayed', true,
                                'session', to_jsonb(us), 'credits_remaining', sub.credits_remaining);
    END IF;
    IF us.status <> 'ACTIVE' THEN
      RETURN jsonb_build_object('error', 'SESSION_ENDED');
    END IF;
    due := p_units;
    us.auto_deductions_processed := us.auto_deductions_processed + p_units;
  ELSIF p_mode = 'END' THEN
    IF us.status = 'ENDED' THEN
      SELECT * INTO sub FROM subscriptions WHERE id = us.subscription_id;
      RETURN jsonb_build_object('charged', coalesce(us.final_units_charged, 0), 'unpaid', 0, 'replayed', true,
                                'session', to_jsonb(us), 'credits_remaining', sub.credits_remaining);
    END IF;
    elapsed_units := ceil(extract(epoch FROM (greatest(p_now, us.started_at) - us.started_at)) / us.deduction_interval_seconds)::bigint;
    due := greatest(0, elapsed_units - us.auto_deductions_processed) + p_units;
    us.status := 'ENDED';
    us.ended_at := greatest(p_now, us.started_at);
    us.manual_deductions := us.manual_deductions + p_units;
  ELSE
    RETURN jsonb_build_object('error', 'BAD_MODE');
  END IF;

  SELECT * INTO sub FROM subscriptions WHERE id = us.subscription_id FOR UPDATE;
  IF sub.status <> 'ACTIVE' THEN
    -- The user paid (or was moved to another plan) while the session ran:
    -- the balance now lives in the user's ACTIVE subscription.
    SELECT * INTO sub FROM subscriptions WHERE user_id = us.user_id AND status = 'ACTIVE' FOR UPDATE;
    IF NOT FOUND THEN
      SELECT * INTO sub FROM subscriptions WHERE id = us.subscription_id;
    END IF;
    moved := us.subscription_id IS DISTINCT FROM sub.id;
    us.subscription_id := sub.id;
  END IF;
  IF sub.status = 'ACTIVE' AND p_now >= sub.period_end THEN
    PERFORM billing_roll_period(sub.id, p_now);
    SELECT * INTO sub FROM subscriptions WHERE id = us.subscription_id;
  END IF;

  paid := least(due, sub.credits_remaining);
  IF paid > 0 THEN
    INSERT INTO ledger (subscription_id, period_start, usage_session_id, unit_index, kind, credits, created_at)
    SELECT sub.id, sub.period_start, us.id, us.next_unit_index + g, 'USAGE', 1, p_now
      FROM generate_series(0, paid - 1) AS g;
    UPDATE subscriptions SET credits_remaining = credits_remaining - paid, updated_at = p_now WHERE id = sub.id;
    sub.credits_remaining := sub.credits_remaining - paid;
  END IF;

  us.next_unit_index := us.next_unit_index + due;
  us.units_charged := us.units_charged + paid;
  us.units_unpaid := us.units_unpaid + (due - paid);
  IF p_mode = 'END' THEN
    us.final_units_charged := due;
  END IF;
  IF due > 0 OR p_mode = 'END' OR moved THEN
    UPDATE usage_sessions
       SET status = us.status, ended_at = us.ended_at, subscription_id = us.subscription_id,
           auto_deductions_processed = us.auto_deductions_processed,
           manual_deductions = us.manual_deductions,
           next_unit_index = us.next_unit_index,
           units_charged = us.units_charged, units_unpaid = us.units_unpaid,
           final_units_charged = us.final_units_charged, updated_at = p_now
     WHERE id = us.id;
  END IF;
  IF p_mode = 'EXPLICIT' THEN
    INSERT INTO deductions (usage_session_id, deduction_id, units, units_charged, units_unpaid, created_at)
    VALUES (us.id, p_deduction_id, p_units, paid, due - paid, p_now);
  END IF;

  RETURN jsonb_build_object('charged', paid, 'unpaid', due - paid, 'replayed', replayed,
                            'session', to_jsonb(us), 'credits_remaining', sub.credits_remaining);
END $$;
