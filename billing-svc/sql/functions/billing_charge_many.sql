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
-- The pieces, each in its own file:
--   billing_charge_lock           locks the sessions, then (several items)
--                                 their subscriptions, each kind in id order
--   billing_charge_set_based      a batch of EXPLICIT items on ACTIVE
--                                 subscriptions inside their period: the
--                                 per-item arithmetic in memory, one write
--                                 per table
--   billing_charge_item           anything else, one item at a time
--   billing_charge_subscription   (for billing_charge_item) the subscription
--                                 an item draws on: locked, moved to the
--                                 live one, its due period rolled
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
CREATE OR REPLACE FUNCTION billing_charge_many(p_sessions uuid[], p_modes text[], p_units bigint[], p_deduction_ids text[],
                                               p_now timestamptz, p_skip_locked boolean)
RETURNS TABLE (r_item int, r_error text, r_charged bigint, r_unpaid bigint, r_replayed boolean, r_credits_remaining bigint,
               s_id uuid, s_user_id text, s_subscription_id uuid, s_kind text, s_status text, s_started_at timestamptz,
               s_ended_at timestamptz, s_deduction_interval_seconds int, s_auto_deductions_processed bigint,
               s_units_charged bigint, s_units_unpaid bigint, s_final_units_charged bigint)
-- Every statement here and in the pieces (which run under these settings)
-- looks rows up by primary key (or over small arrays of keys): the generic
-- plan is the custom one, so it is not planned again on each call
-- (measured: +15-35 % single charges on one backend); and never a table
-- scan: generic plans are built once per connection and kept until the
-- tables are analyzed again, and one built while the tables were nearly
-- empty (a new database) would scan them whole once they had grown.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
  n int := coalesce(array_length(p_sessions, 1), 0);
  locks record;
BEGIN
  locks := billing_charge_lock(p_sessions, p_skip_locked, n > 1);
  -- The set-based form, for a batch whose subscriptions are all ACTIVE
  -- inside their period (no move to a live subscription, no period to
  -- roll). Anything else takes the per-item path.
  IF n > 1 AND p_modes <@ ARRAY['EXPLICIT'] AND NOT EXISTS (
       SELECT 1 FROM unnest(locks.subs) s WHERE s.status <> 'ACTIVE' OR p_now >= s.period_end) THEN
    RETURN QUERY SELECT * FROM billing_charge_set_based(p_sessions, p_units, p_deduction_ids, p_now, p_skip_locked,
                                                        locks.sessions, locks.subs, locks.sub_ids);
    RETURN;
  END IF;
  FOR i IN 1..n LOOP
    RETURN QUERY SELECT i, c.* FROM billing_charge_item(
      p_sessions[i], p_modes[i], coalesce(p_units[i], 0), p_deduction_ids[i], p_now,
      p_sessions[i] = ANY(locks.sessions), p_skip_locked,
      -- This item never waits for a subscription row someone else holds (a
      -- coalesced item, or any item of a batch): BUSY instead.
      p_skip_locked AND (n > 1 OR p_modes[i] = 'EXPLICIT')) c;
  END LOOP;
END $$;
