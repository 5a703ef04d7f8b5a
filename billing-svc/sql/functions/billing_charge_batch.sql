-- Coalesced Deduct calls (EXPLICIT items): one statement, one transaction,
-- one commit for the batch, a row per item. Sessions held by someone else
-- answer BUSY instead of being waited for.
CREATE OR REPLACE FUNCTION billing_charge_batch(p_sessions uuid[], p_deduction_ids text[], p_units bigint[], p_now timestamptz)
RETURNS TABLE (r_item int, r_error text, r_charged bigint, r_unpaid bigint, r_replayed boolean, r_credits_remaining bigint,
               s_id uuid, s_user_id text, s_subscription_id uuid, s_kind text, s_status text, s_started_at timestamptz,
               s_ended_at timestamptz, s_deduction_interval_seconds int, s_auto_deductions_processed bigint,
               s_units_charged bigint, s_units_unpaid bigint, s_final_units_charged bigint)
LANGUAGE plpgsql AS $$
BEGIN
  -- plpgsql, not sql: its plan is cached on the connection between calls.
  RETURN QUERY SELECT * FROM billing_charge_many(p_sessions, array_fill('EXPLICIT'::text, ARRAY[coalesce(array_length(p_sessions, 1), 0)]),
                                                 p_units, p_deduction_ids, p_now, true);
END $$;
