-- Back to billing_charge as defined in 2026-11-24-000006_charge_live_subscription/up.sql.
DROP FUNCTION IF EXISTS billing_charge_batch(uuid[], text[], bigint[], timestamptz);
CREATE OR REPLACE FUNCTION billing_charge(p_session uuid, p_mode text, p_units bigint, p_deduction_id text, p_now timestamptz)
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
  live subscriptions;
  no_balance boolean := false;
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
    -- the balance now lives in the user's ACTIVE subscription. When a
    -- purchase commits while this statement waits for the row it replaces,
    -- that row no longer qualifies and the new one is not in this
    -- statement's snapshot: look again with a fresh snapshot (each statement
    -- takes one) instead of charging a REPLACED or CANCELLED row.
    FOR attempt IN 1..3 LOOP
      SELECT * INTO live FROM subscriptions WHERE user_id = us.user_id AND status = 'ACTIVE' FOR UPDATE;
      EXIT WHEN FOUND;
    END LOOP;
    IF live.id IS NOT NULL THEN
      sub := live;
      moved := us.subscription_id IS DISTINCT FROM sub.id;
      us.subscription_id := sub.id;
    ELSE
      -- No live balance at all (cancelled, not yet replaced): nothing is
      -- charged from the dead row; the units are recorded as unpaid.
      no_balance := true;
    END IF;
  END IF;
  IF sub.status = 'ACTIVE' AND p_now >= sub.period_end THEN
    PERFORM billing_roll_period(sub.id, p_now);
    SELECT * INTO sub FROM subscriptions WHERE id = us.subscription_id;
  END IF;

  paid := CASE WHEN no_balance THEN 0 ELSE least(due, sub.credits_remaining) END;
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
DROP FUNCTION IF EXISTS billing_charge_many(uuid[], text[], bigint[], text[], timestamptz, boolean);
