DROP FUNCTION IF EXISTS billing_charge(uuid, text, bigint, text, timestamptz);
DROP FUNCTION IF EXISTS billing_roll_period(uuid, timestamptz);
