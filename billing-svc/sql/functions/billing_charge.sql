-- One charge, as before (AUTO skips a held session; END and EXPLICIT wait
-- for it). Returns jsonb: {error}, {skipped} (AUTO only) or
-- {charged, unpaid, replayed, session: {...}, credits_remaining}.
CREATE OR REPLACE FUNCTION billing_charge(p_session uuid, p_mode text, p_units bigint, p_deduction_id text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  SELECT * INTO r FROM billing_charge_many(ARRAY[p_session], ARRAY[p_mode], ARRAY[p_units], ARRAY[p_deduction_id], p_now, p_mode = 'AUTO');
  IF r.r_error = 'BUSY' THEN
    RETURN jsonb_build_object('skipped', true);
  ELSIF r.r_error IS NOT NULL THEN
    RETURN jsonb_build_object('error', r.r_error);
  END IF;
  RETURN jsonb_build_object('charged', r.r_charged, 'unpaid', r.r_unpaid, 'replayed', r.r_replayed,
                            'credits_remaining', r.r_credits_remaining,
                            'session', jsonb_build_object('id', r.s_id, 'user_id', r.s_user_id, 'subscription_id', r.s_subscription_id,
                              'kind', r.s_kind, 'status', r.s_status, 'started_at', r.s_started_at, 'ended_at', r.s_ended_at,
                              'deduction_interval_seconds', r.s_deduction_interval_seconds,
                              'auto_deductions_processed', r.s_auto_deductions_processed, 'units_charged', r.s_units_charged,
                              'units_unpaid', r.s_units_unpaid, 'final_units_charged', r.s_final_units_charged));
END $$;
