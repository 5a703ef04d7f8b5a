-- billing_charge_many's set-based form (docs/design.md, Performance): a
-- batch of EXPLICIT items whose subscriptions are all ACTIVE inside their
-- period (no move to a live subscription, no period to roll), on the rows
-- billing_charge_lock locked (p_locked: session ids; p_subs, p_sub_ids: the
-- subscription rows and their ids). The same arithmetic as
-- billing_charge_item's EXPLICIT steps, item by item in arrival order on the
-- rows held in memory, then one INSERT or UPDATE per table for the whole
-- batch instead of several statements per item (a hot subscription's
-- balance is updated once). Same rows out as billing_charge_many. Runs under
-- its plan settings.
CREATE OR REPLACE FUNCTION billing_charge_set_based(p_sessions uuid[], p_units bigint[], p_deduction_ids text[], p_now timestamptz,
                                                    p_skip_locked boolean, p_locked uuid[], p_subs subscriptions[], p_sub_ids uuid[])
RETURNS TABLE (r_item int, r_error text, r_charged bigint, r_unpaid bigint, r_replayed boolean, r_credits_remaining bigint,
               s_id uuid, s_user_id text, s_subscription_id uuid, s_kind text, s_status text, s_started_at timestamptz,
               s_ended_at timestamptz, s_deduction_interval_seconds int, s_auto_deductions_processed bigint,
               s_units_charged bigint, s_units_unpaid bigint, s_final_units_charged bigint)
LANGUAGE plpgsql AS $$
DECLARE
  v_session uuid;
  v_units bigint;
  v_deduction_id text;
  us usage_sessions;
  sub subscriptions;
  subs subscriptions[] := p_subs;
  due bigint;
  paid bigint;
  -- The locked sessions in memory, and their ids for array_position.
  sess usage_sessions[];
  sess_ids uuid[];
  si int;
  bi int;
  -- Deductions known so far (committed before, or earlier in this batch):
  -- key session/deduction_id, and what they charged.
  d_keys text[];
  d_units bigint[];
  d_charged bigint[];
  d_unpaid bigint[];
  k int;
  new_from int;
  -- Ledger rows to insert.
  l_sub uuid[] := '{}';
  l_period timestamptz[] := '{}';
  l_sess uuid[] := '{}';
  l_idx bigint[] := '{}';
BEGIN
  SELECT coalesce(array_agg(u ORDER BY u.id), '{}'), coalesce(array_agg(u.id ORDER BY u.id), '{}') INTO sess, sess_ids
    FROM usage_sessions u WHERE u.id = ANY(p_locked);
  SELECT coalesce(array_agg(d.usage_session_id || '/' || d.deduction_id), '{}'), coalesce(array_agg(d.units), '{}'),
         coalesce(array_agg(d.units_charged), '{}'), coalesce(array_agg(d.units_unpaid), '{}')
    INTO d_keys, d_units, d_charged, d_unpaid
    FROM deductions d
   WHERE (d.usage_session_id, d.deduction_id) IN (SELECT * FROM unnest(p_sessions, p_deduction_ids));
  new_from := coalesce(array_length(d_keys, 1), 0) + 1;
  FOR i IN 1..coalesce(array_length(p_sessions, 1), 0) LOOP
    v_session := p_sessions[i];
    v_units := coalesce(p_units[i], 0);
    v_deduction_id := p_deduction_ids[i];
    r_item := i; r_error := NULL; r_charged := NULL; r_unpaid := NULL; r_replayed := false; r_credits_remaining := NULL;
    si := array_position(sess_ids, v_session);
    k := array_position(d_keys, v_session || '/' || v_deduction_id);
    IF si IS NULL THEN
      IF p_skip_locked AND EXISTS (SELECT 1 FROM usage_sessions u WHERE u.id = v_session) THEN
        r_error := 'BUSY';
      ELSE
        r_error := 'NOT_FOUND';
      END IF;
    ELSE
      us := sess[si];
      bi := array_position(p_sub_ids, us.subscription_id);
      sub := subs[bi];
      IF bi IS NULL THEN
        -- Its subscription is held by someone else (skipped by the lock):
        -- never charge against a row not locked here.
        r_error := 'BUSY';
      ELSIF k IS NOT NULL THEN
        IF d_units[k] <> v_units THEN
          r_error := 'DEDUCTION_ID_REUSED';
        ELSE
          r_charged := d_charged[k];
          r_unpaid := d_unpaid[k];
          r_replayed := true;
          r_credits_remaining := sub.credits_remaining;
        END IF;
      ELSIF us.status <> 'ACTIVE' THEN
        r_error := 'SESSION_ENDED';
      ELSE
        due := v_units;
        paid := least(due, sub.credits_remaining);
        IF paid = 1 THEN
          l_sub := l_sub || sub.id;
          l_period := l_period || sub.period_start;
          l_sess := l_sess || us.id;
          l_idx := l_idx || us.next_unit_index;
        ELSIF paid > 1 THEN
          l_sub := l_sub || array_fill(sub.id, ARRAY[paid::int]);
          l_period := l_period || array_fill(sub.period_start, ARRAY[paid::int]);
          l_sess := l_sess || array_fill(us.id, ARRAY[paid::int]);
          l_idx := l_idx || ARRAY(SELECT us.next_unit_index + g FROM generate_series(0, paid - 1) AS g);
        END IF;
        IF paid > 0 THEN
          sub.credits_remaining := sub.credits_remaining - paid;
          subs[bi] := sub;
        END IF;
        us.auto_deductions_processed := us.auto_deductions_processed + v_units;
        us.next_unit_index := us.next_unit_index + due;
        us.units_charged := us.units_charged + paid;
        us.units_unpaid := us.units_unpaid + (due - paid);
        sess[si] := us;
        d_keys := d_keys || (v_session || '/' || v_deduction_id);
        d_units := d_units || v_units;
        d_charged := d_charged || paid;
        d_unpaid := d_unpaid || (due - paid);
        r_charged := paid;
        r_unpaid := due - paid;
        r_credits_remaining := sub.credits_remaining;
      END IF;
    END IF;
    IF r_error IS NOT NULL THEN
      us := NULL;
    END IF;
    s_id := us.id; s_user_id := us.user_id; s_subscription_id := us.subscription_id; s_kind := us.kind;
    s_status := us.status; s_started_at := us.started_at; s_ended_at := us.ended_at;
    s_deduction_interval_seconds := us.deduction_interval_seconds; s_auto_deductions_processed := us.auto_deductions_processed;
    s_units_charged := us.units_charged; s_units_unpaid := us.units_unpaid; s_final_units_charged := us.final_units_charged;
    RETURN NEXT;
  END LOOP;
  -- The writes: a ledger row per paid unit, the balances lowered by as many
  -- credits, the sessions' counters, a deductions row per new id.
  INSERT INTO ledger (subscription_id, period_start, usage_session_id, unit_index, kind, credits, created_at)
  SELECT x.sid, x.period_start, x.usid, x.idx, 'USAGE', 1, p_now FROM unnest(l_sub, l_period, l_sess, l_idx) AS x(sid, period_start, usid, idx);
  UPDATE subscriptions s SET credits_remaining = s.credits_remaining - t.paid, updated_at = p_now
    FROM (SELECT x.sid, count(*) AS paid FROM unnest(l_sub) AS x(sid) GROUP BY x.sid) t
   WHERE s.id = t.sid;
  UPDATE usage_sessions u
     SET auto_deductions_processed = x.auto_deductions_processed, next_unit_index = x.next_unit_index,
         units_charged = x.units_charged, units_unpaid = x.units_unpaid, updated_at = p_now
    FROM unnest(sess) x
   WHERE u.id = x.id AND u.next_unit_index <> x.next_unit_index;
  INSERT INTO deductions (usage_session_id, deduction_id, units, units_charged, units_unpaid, created_at)
  SELECT split_part(x.k, '/', 1)::uuid, substr(x.k, 38), x.u, x.c, x.p, p_now
    FROM unnest(d_keys[new_from:], d_units[new_from:], d_charged[new_from:], d_unpaid[new_from:]) AS x(k, u, c, p);
END $$;
