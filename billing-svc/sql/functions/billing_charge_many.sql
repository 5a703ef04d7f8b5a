-- The one code path that changes a balance (docs/design.md, Deductions and
-- Performance): billing_charge (one item: the auto-deduct job,
-- EndUsageSession, reconcile's repair of stuck sessions, Deduct when
-- coalescing is off) and billing_charge_batch (coalesced Deduct calls) both
-- run it. Per item: work out the units due from the fresh, locked session
-- row; charge the user's live ACTIVE subscription (fresh-snapshot retry when
-- the session's one was replaced; none live: unpaid); roll a due period; one
-- ledger row per paid unit (UNIQUE(usage_session_id, unit_index)); the
-- balance lowered by the same amount, never below zero; the unpaid rest
-- recorded on the session; EXPLICIT idempotent on deduction_id.
--
-- Locks: every session of the call in id order, then (several items) every
-- subscription they point at in id order, then the items run in array
-- order. Everyone locks a session before its subscription and sorted within
-- each kind, so two batches, or a batch and a single charge, cannot wait on
-- each other in a cycle (the rare move to a live subscription locks out of
-- order; a deadlock is retried by the caller). With p_skip_locked a session
-- someone else holds is not waited for: its item answers BUSY (AUTO: skip
-- until the next tick; a batch: the service charges it on its own, waiting
-- like any single charge), so one held row never stalls a whole batch. A
-- coalesced (EXPLICIT, p_skip_locked) item, even alone in its batch, whose
-- subscription (or, when that was replaced, the user's live one) is held
-- answers BUSY too (Invariants 18); AUTO charges wait for the subscription.
--
-- One row per item, in order: r_error NULL (then the charge and the session
-- after it), or NOT_FOUND, SESSION_ENDED, DEDUCTION_ID_REUSED, BUSY,
-- BAD_MODE. Such an error fails only its item.
--
-- Its statements run with generic plans and never scan a table
-- (enable_seqscan = off): a plan built once per connection while the tables
-- were nearly empty would otherwise scan them whole once they had grown.
CREATE OR REPLACE FUNCTION billing_charge_many(p_sessions uuid[], p_modes text[], p_units bigint[], p_deduction_ids text[],
                                               p_now timestamptz, p_skip_locked boolean)
RETURNS TABLE (r_item int, r_error text, r_charged bigint, r_unpaid bigint, r_replayed boolean, r_credits_remaining bigint,
               s_id uuid, s_user_id text, s_subscription_id uuid, s_kind text, s_status text, s_started_at timestamptz,
               s_ended_at timestamptz, s_deduction_interval_seconds int, s_auto_deductions_processed bigint,
               s_units_charged bigint, s_units_unpaid bigint, s_final_units_charged bigint)
-- Every statement below looks rows up by primary key (or over small
-- arrays of keys): the generic plan is the custom one, so it is not planned
-- again on each call (measured: +15-35 % single charges on one backend);
-- and never a table scan, however small the tables were when it was built.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
  n int := coalesce(array_length(p_sessions, 1), 0);
  locked uuid[];
  v_session uuid;
  v_mode text;
  v_units bigint;
  v_deduction_id text;
  us usage_sessions;
  sub subscriptions;
  live subscriptions;
  prior deductions;
  due bigint;
  elapsed_units bigint;
  paid bigint;
  moved boolean;
  no_balance boolean;
  -- This item never waits for a subscription row someone else holds (a
  -- coalesced item, or any item of a batch): BUSY instead.
  skip_held_subscription boolean;
  -- The set-based form (EXPLICIT batches on live subscriptions): the locked
  -- rows in memory, parallel arrays of their ids for array_position.
  sess usage_sessions[];
  sess_ids uuid[];
  subs subscriptions[];
  sub_ids uuid[];
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
  IF p_skip_locked THEN
    SELECT coalesce(array_agg(l.id), '{}') INTO locked
      FROM (SELECT u.id FROM usage_sessions u WHERE u.id = ANY(p_sessions) ORDER BY u.id FOR UPDATE SKIP LOCKED) l;
  ELSE
    SELECT coalesce(array_agg(l.id), '{}') INTO locked
      FROM (SELECT u.id FROM usage_sessions u WHERE u.id = ANY(p_sessions) ORDER BY u.id FOR UPDATE) l;
  END IF;
  -- A batch never waits for a subscription someone else holds (an open
  -- transaction, a long capture): its items answer BUSY and are charged on
  -- their own, so one held row cannot stall a whole batch.
  IF n > 1 AND p_skip_locked THEN
    SELECT coalesce(array_agg(l.s ORDER BY (l.s).id), '{}'), coalesce(array_agg((l.s).id ORDER BY (l.s).id), '{}') INTO subs, sub_ids
      FROM (SELECT s FROM subscriptions s
             WHERE s.id IN (SELECT u.subscription_id FROM usage_sessions u WHERE u.id = ANY(locked))
             ORDER BY s.id FOR UPDATE SKIP LOCKED) l;
  ELSIF n > 1 THEN
    SELECT coalesce(array_agg(l.s ORDER BY (l.s).id), '{}'), coalesce(array_agg((l.s).id ORDER BY (l.s).id), '{}') INTO subs, sub_ids
      FROM (SELECT s FROM subscriptions s
             WHERE s.id IN (SELECT u.subscription_id FROM usage_sessions u WHERE u.id = ANY(locked)) ORDER BY s.id FOR UPDATE) l;
  END IF;

  -- Set-based form of the EXPLICIT steps below, for a batch whose
  -- subscriptions are all ACTIVE inside their period (no move to a live
  -- subscription, no period to roll): the same per-item arithmetic, in
  -- arrival order, on the locked rows held in memory, then one INSERT or
  -- UPDATE per table for the whole batch instead of several statements per
  -- item (docs/design.md, Performance). Anything else takes the per-item
  -- path further down.
  IF n > 1 AND p_modes <@ ARRAY['EXPLICIT'] AND NOT EXISTS (
       SELECT 1 FROM unnest(subs) s WHERE s.status <> 'ACTIVE' OR p_now >= s.period_end) THEN
    SELECT coalesce(array_agg(u ORDER BY u.id), '{}'), coalesce(array_agg(u.id ORDER BY u.id), '{}') INTO sess, sess_ids
      FROM usage_sessions u WHERE u.id = ANY(locked);
    SELECT coalesce(array_agg(d.usage_session_id || '/' || d.deduction_id), '{}'), coalesce(array_agg(d.units), '{}'),
           coalesce(array_agg(d.units_charged), '{}'), coalesce(array_agg(d.units_unpaid), '{}')
      INTO d_keys, d_units, d_charged, d_unpaid
      FROM deductions d
     WHERE (d.usage_session_id, d.deduction_id) IN (SELECT * FROM unnest(p_sessions, p_deduction_ids));
    new_from := coalesce(array_length(d_keys, 1), 0) + 1;
    FOR i IN 1..n LOOP
      v_session := p_sessions[i];
      v_units := coalesce(p_units[i], 0);
      v_deduction_id := p_deduction_ids[i];
      r_item := i;
      r_error := NULL;
      r_charged := NULL;
      r_unpaid := NULL;
      r_replayed := false;
      r_credits_remaining := NULL;
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
        bi := array_position(sub_ids, us.subscription_id);
        sub := subs[bi];
        IF bi IS NULL THEN
          -- Its subscription is held by someone else (skipped above): never
          -- charge against a row not locked here.
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
            sub.credits_remaining := sub.credits_remaining - 1;
            subs[bi] := sub;
          ELSIF paid > 1 THEN
            l_sub := l_sub || array_fill(sub.id, ARRAY[paid::int]);
            l_period := l_period || array_fill(sub.period_start, ARRAY[paid::int]);
            l_sess := l_sess || array_fill(us.id, ARRAY[paid::int]);
            l_idx := l_idx || ARRAY(SELECT us.next_unit_index + g FROM generate_series(0, paid - 1) AS g);
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
      IF r_error IS NULL THEN
        s_id := us.id;
        s_user_id := us.user_id;
        s_subscription_id := us.subscription_id;
        s_kind := us.kind;
        s_status := us.status;
        s_started_at := us.started_at;
        s_ended_at := us.ended_at;
        s_deduction_interval_seconds := us.deduction_interval_seconds;
        s_auto_deductions_processed := us.auto_deductions_processed;
        s_units_charged := us.units_charged;
        s_units_unpaid := us.units_unpaid;
        s_final_units_charged := us.final_units_charged;
      ELSE
        s_id := NULL;
        s_user_id := NULL;
        s_subscription_id := NULL;
        s_kind := NULL;
        s_status := NULL;
        s_started_at := NULL;
        s_ended_at := NULL;
        s_deduction_interval_seconds := NULL;
        s_auto_deductions_processed := NULL;
        s_units_charged := NULL;
        s_units_unpaid := NULL;
        s_final_units_charged := NULL;
      END IF;
      RETURN NEXT;
    END LOOP;
    -- The writes: a ledger row per paid unit, the balances lowered by as
    -- many credits, the sessions' counters, a deductions row per new id.
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
    RETURN;
  END IF;

  FOR i IN 1..n LOOP
    v_session := p_sessions[i];
    v_mode := p_modes[i];
    skip_held_subscription := p_skip_locked AND (n > 1 OR v_mode = 'EXPLICIT');
    v_units := coalesce(p_units[i], 0);
    v_deduction_id := p_deduction_ids[i];
    r_item := i;
    r_error := NULL;
    r_charged := NULL;
    r_unpaid := NULL;
    r_replayed := false;
    r_credits_remaining := NULL;
    due := 0;
    moved := false;
    no_balance := false;
    <<item>> LOOP
      IF NOT (v_session = ANY(locked)) THEN
        -- Not locked: held by someone else (only when skipping), or absent.
        IF p_skip_locked AND (v_mode = 'AUTO' OR EXISTS (SELECT 1 FROM usage_sessions u WHERE u.id = v_session)) THEN
          r_error := 'BUSY';
        ELSE
          r_error := 'NOT_FOUND';
        END IF;
        EXIT item;
      END IF;
      -- The fresh row: locked above, and earlier items of this call may
      -- have charged it.
      SELECT * INTO us FROM usage_sessions u WHERE u.id = v_session;

      IF v_mode = 'AUTO' THEN
        IF us.status = 'ACTIVE' THEN
          elapsed_units := floor(extract(epoch FROM (p_now - us.started_at)) / us.deduction_interval_seconds)::bigint;
          due := greatest(0, elapsed_units - us.auto_deductions_processed);
          us.auto_deductions_processed := us.auto_deductions_processed + due;
        END IF;
      ELSIF v_mode = 'EXPLICIT' THEN
        SELECT * INTO prior FROM deductions d WHERE d.usage_session_id = v_session AND d.deduction_id = v_deduction_id;
        IF FOUND THEN
          IF prior.units <> v_units THEN
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
        due := v_units;
        us.auto_deductions_processed := us.auto_deductions_processed + v_units;
      ELSIF v_mode = 'END' THEN
        IF us.status = 'ENDED' THEN
          SELECT s.credits_remaining INTO r_credits_remaining FROM subscriptions s WHERE s.id = us.subscription_id;
          r_charged := coalesce(us.final_units_charged, 0);
          r_unpaid := 0;
          r_replayed := true;
          EXIT item;
        END IF;
        elapsed_units := ceil(extract(epoch FROM (greatest(p_now, us.started_at) - us.started_at)) / us.deduction_interval_seconds)::bigint;
        due := greatest(0, elapsed_units - us.auto_deductions_processed) + v_units;
        us.status := 'ENDED';
        us.ended_at := greatest(p_now, us.started_at);
        us.manual_deductions := us.manual_deductions + v_units;
      ELSE
        r_error := 'BAD_MODE';
        EXIT item;
      END IF;

      IF skip_held_subscription THEN
        -- A coalesced item, even alone in its batch, whose subscription is
        -- held by another transaction (rows this one locked are not
        -- skipped): charged on its own instead of stalling the batch;
        -- nothing is written for this item yet.
        SELECT * INTO sub FROM subscriptions s WHERE s.id = us.subscription_id FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
          r_error := 'BUSY';
          EXIT item;
        END IF;
      ELSE
        SELECT * INTO sub FROM subscriptions s WHERE s.id = us.subscription_id FOR UPDATE;
      END IF;
      IF sub.status <> 'ACTIVE' THEN
        -- The user paid (or was moved to another plan) while the session ran:
        -- the balance now lives in the user's ACTIVE subscription. When a
        -- purchase commits while this statement waits for the row it replaces,
        -- that row no longer qualifies and the new one is not in this
        -- statement's snapshot: look again with a fresh snapshot (each statement
        -- takes one) instead of charging a REPLACED or CANCELLED row.
        live := NULL;
        IF skip_held_subscription THEN
          -- A batch does not wait for the live row either (a purchase or a
          -- capture holding it): the item is charged on its own.
          SELECT * INTO live FROM subscriptions s WHERE s.user_id = us.user_id AND s.status = 'ACTIVE' FOR UPDATE SKIP LOCKED;
          IF NOT FOUND AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.user_id = us.user_id AND s.status = 'ACTIVE') THEN
            r_error := 'BUSY';
            EXIT item;
          END IF;
        ELSE
          FOR attempt IN 1..3 LOOP
            SELECT * INTO live FROM subscriptions s WHERE s.user_id = us.user_id AND s.status = 'ACTIVE' FOR UPDATE;
            EXIT WHEN FOUND;
          END LOOP;
        END IF;
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
        SELECT * INTO sub FROM subscriptions s WHERE s.id = us.subscription_id;
      END IF;

      paid := CASE WHEN no_balance THEN 0 ELSE least(due, sub.credits_remaining) END;
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
      IF v_mode = 'END' THEN
        us.final_units_charged := due;
      END IF;
      IF due > 0 OR v_mode = 'END' OR moved THEN
        UPDATE usage_sessions u
           SET status = us.status, ended_at = us.ended_at, subscription_id = us.subscription_id,
               auto_deductions_processed = us.auto_deductions_processed,
               manual_deductions = us.manual_deductions,
               next_unit_index = us.next_unit_index,
               units_charged = us.units_charged, units_unpaid = us.units_unpaid,
               final_units_charged = us.final_units_charged, updated_at = p_now
         WHERE u.id = us.id;
      END IF;
      IF v_mode = 'EXPLICIT' THEN
        INSERT INTO deductions (usage_session_id, deduction_id, units, units_charged, units_unpaid, created_at)
        VALUES (us.id, v_deduction_id, v_units, paid, due - paid, p_now);
      END IF;
      r_charged := paid;
      r_unpaid := due - paid;
      r_credits_remaining := sub.credits_remaining;
      EXIT item;
    END LOOP;

    IF r_error IS NULL THEN
      s_id := us.id;
      s_user_id := us.user_id;
      s_subscription_id := us.subscription_id;
      s_kind := us.kind;
      s_status := us.status;
      s_started_at := us.started_at;
      s_ended_at := us.ended_at;
      s_deduction_interval_seconds := us.deduction_interval_seconds;
      s_auto_deductions_processed := us.auto_deductions_processed;
      s_units_charged := us.units_charged;
      s_units_unpaid := us.units_unpaid;
      s_final_units_charged := us.final_units_charged;
    ELSE
      s_id := NULL;
      s_user_id := NULL;
      s_subscription_id := NULL;
      s_kind := NULL;
      s_status := NULL;
      s_started_at := NULL;
      s_ended_at := NULL;
      s_deduction_interval_seconds := NULL;
      s_auto_deductions_processed := NULL;
      s_units_charged := NULL;
      s_units_unpaid := NULL;
      s_final_units_charged := NULL;
    END IF;
    RETURN NEXT;
  END LOOP;
END $$;
