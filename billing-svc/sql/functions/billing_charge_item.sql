-- billing_charge_many's per-item path (docs/design.md, Deductions): one
-- item (p_session, p_mode, p_units, p_deduction_id) on a session the call
-- locked (p_locked; not locked: held by someone else when skipping, or
-- absent). Works out the units due from the fresh session row (earlier
-- items of the call may have charged it):
--   AUTO     the complete intervals elapsed since the last auto charge
--   EXPLICIT the caller's deduction: p_units, idempotent on p_deduction_id;
--            the units count as processed intervals, so neither the job nor
--            END charges them again
--   END      end the session: max(0, ceil(duration/interval) - processed)
--            + p_units, once (a repeat is a replay)
-- then charges them to billing_charge_subscription's row (p_skip_held: BUSY
-- instead of waiting for it): one ledger row per paid unit, the balance
-- lowered by as many credits, never below zero, the unpaid rest recorded on
-- the session. One row out, as billing_charge_many's without r_item. Runs
-- under billing_charge_many's plan settings.
CREATE OR REPLACE FUNCTION billing_charge_item(p_session uuid, p_mode text, p_units bigint, p_deduction_id text, p_now timestamptz,
                                               p_locked boolean, p_skip_locked boolean, p_skip_held boolean,
                                               OUT r_error text, OUT r_charged bigint, OUT r_unpaid bigint, OUT r_replayed boolean,
                                               OUT r_credits_remaining bigint, OUT s_id uuid, OUT s_user_id text,
                                               OUT s_subscription_id uuid, OUT s_kind text, OUT s_status text,
                                               OUT s_started_at timestamptz, OUT s_ended_at timestamptz,
                                               OUT s_deduction_interval_seconds int, OUT s_auto_deductions_processed bigint,
                                               OUT s_units_charged bigint, OUT s_units_unpaid bigint, OUT s_final_units_charged bigint)
LANGUAGE plpgsql AS $$
DECLARE
  us usage_sessions;
  sub subscriptions;
  prior deductions;
  due bigint := 0;
  elapsed_units bigint;
  paid bigint;
  moved boolean;
BEGIN
  r_replayed := false;
  <<item>> LOOP
    IF NOT p_locked THEN
      IF p_skip_locked AND (p_mode = 'AUTO' OR EXISTS (SELECT 1 FROM usage_sessions u WHERE u.id = p_session)) THEN
        r_error := 'BUSY';
      ELSE
        r_error := 'NOT_FOUND';
      END IF;
      EXIT item;
    END IF;
    SELECT * INTO us FROM usage_sessions u WHERE u.id = p_session;

    IF p_mode = 'AUTO' THEN
      IF us.status = 'ACTIVE' THEN
        elapsed_units := floor(extract(epoch FROM (p_now - us.started_at)) / us.deduction_interval_seconds)::bigint;
        due := greatest(0, elapsed_units - us.auto_deductions_processed);
        us.auto_deductions_processed := us.auto_deductions_processed + due;
      END IF;
    ELSIF p_mode = 'EXPLICIT' THEN
      SELECT * INTO prior FROM deductions d WHERE d.usage_session_id = p_session AND d.deduction_id = p_deduction_id;
      IF FOUND THEN
        IF prior.units <> p_units THEN
          r_error := 'DEDUCTION_ID_REUSED';
          EXIT item;
        END IF;
        SELECT s.credits_remaining INTO r_credits_remaining FROM subscriptions s WHERE s.id = us.subscription_id;
        r_charged := prior.units_charged;
        r_unpaid := prior.units_unpaid;
        r_replayed := true;
        EXIT item;
      END IF;
      IF us.status <> 'ACTIVE' THEN
        r_error := 'SESSION_ENDED';
        EXIT item;
      END IF;
      due := p_units;
      us.auto_deductions_processed := us.auto_deductions_processed + p_units;
    ELSIF p_mode = 'END' THEN
      IF us.status = 'ENDED' THEN
        SELECT s.credits_remaining INTO r_credits_remaining FROM subscriptions s WHERE s.id = us.subscription_id;
        r_charged := coalesce(us.final_units_charged, 0);
        r_unpaid := 0;
        r_replayed := true;
        EXIT item;
      END IF;
      elapsed_units := ceil(extract(epoch FROM (greatest(p_now, us.started_at) - us.started_at)) / us.deduction_interval_seconds)::bigint;
      due := greatest(0, elapsed_units - us.auto_deductions_processed) + p_units;
      us.status := 'ENDED';
      us.ended_at := greatest(p_now, us.started_at);
      us.manual_deductions := us.manual_deductions + p_units;
    ELSE
      r_error := 'BAD_MODE';
      EXIT item;
    END IF;

    sub := billing_charge_subscription(us, p_skip_held, p_now);
    IF sub.id IS NULL THEN
      -- Nothing is written for this item yet; it is charged on its own.
      r_error := 'BUSY';
      EXIT item;
    END IF;
    moved := us.subscription_id IS DISTINCT FROM sub.id;
    us.subscription_id := sub.id;

    -- A row that is not ACTIVE (no live balance) pays nothing.
    paid := CASE WHEN sub.status <> 'ACTIVE' THEN 0 ELSE least(due, sub.credits_remaining) END;
    IF paid = 1 THEN
      INSERT INTO ledger (subscription_id, period_start, usage_session_id, unit_index, kind, credits, created_at)
      VALUES (sub.id, sub.period_start, us.id, us.next_unit_index, 'USAGE', 1, p_now);
    ELSIF paid > 1 THEN
      INSERT INTO ledger (subscription_id, period_start, usage_session_id, unit_index, kind, credits, created_at)
      SELECT sub.id, sub.period_start, us.id, us.next_unit_index + g, 'USAGE', 1, p_now
        FROM generate_series(0, paid - 1) AS g;
    END IF;
    IF paid > 0 THEN
      UPDATE subscriptions s SET credits_remaining = s.credits_remaining - paid, updated_at = p_now WHERE s.id = sub.id;
      sub.credits_remaining := sub.credits_remaining - paid;
    END IF;

    us.next_unit_index := us.next_unit_index + due;
    us.units_charged := us.units_charged + paid;
    us.units_unpaid := us.units_unpaid + (due - paid);
    IF p_mode = 'END' THEN
      us.final_units_charged := due;
    END IF;
    IF due > 0 OR p_mode = 'END' OR moved THEN
      UPDATE usage_sessions u
         SET status = us.status, ended_at = us.ended_at, subscription_id = us.subscription_id,
             auto_deductions_processed = us.auto_deductions_processed, manual_deductions = us.manual_deductions,
             next_unit_index = us.next_unit_index, units_charged = us.units_charged, units_unpaid = us.units_unpaid,
             final_units_charged = us.final_units_charged, updated_at = p_now
       WHERE u.id = us.id;
    END IF;
    IF p_mode = 'EXPLICIT' THEN
      INSERT INTO deductions (usage_session_id, deduction_id, units, units_charged, units_unpaid, created_at)
      VALUES (us.id, p_deduction_id, p_units, paid, due - paid, p_now);
    END IF;
    r_charged := paid;
    r_unpaid := due - paid;
    r_credits_remaining := sub.credits_remaining;
    EXIT item;
  END LOOP;

  IF r_error IS NULL THEN
    s_id := us.id; s_user_id := us.user_id; s_subscription_id := us.subscription_id; s_kind := us.kind;
    s_status := us.status; s_started_at := us.started_at; s_ended_at := us.ended_at;
    s_deduction_interval_seconds := us.deduction_interval_seconds; s_auto_deductions_processed := us.auto_deductions_processed;
    s_units_charged := us.units_charged; s_units_unpaid := us.units_unpaid; s_final_units_charged := us.final_units_charged;
  END IF;
END $$;
