-- The locks of billing_charge_many (docs/design.md, Deductions): the usage
-- sessions of the call in id order, then, when p_subscriptions (several
-- items), every subscription those sessions point at, in id order. With
-- p_skip_locked a row someone else holds is skipped, never waited for: its
-- item answers BUSY (a session) or is charged on its own (a subscription:
-- an open transaction, a long capture), so one held row cannot stall a
-- whole batch (Invariants 18). Returns the ids of the sessions locked and
-- the subscription rows locked and their ids (sorted by id; NULL without
-- p_subscriptions).
-- Runs under billing_charge_many's plan settings.
CREATE OR REPLACE FUNCTION billing_charge_lock(p_sessions uuid[], p_skip_locked boolean, p_subscriptions boolean,
                                               OUT sessions uuid[], OUT subs subscriptions[], OUT sub_ids uuid[])
LANGUAGE plpgsql AS $$
BEGIN
  IF p_skip_locked THEN
    SELECT coalesce(array_agg(l.id), '{}') INTO sessions
      FROM (SELECT u.id FROM usage_sessions u WHERE u.id = ANY(p_sessions) ORDER BY u.id FOR UPDATE SKIP LOCKED) l;
  ELSE
    SELECT coalesce(array_agg(l.id), '{}') INTO sessions
      FROM (SELECT u.id FROM usage_sessions u WHERE u.id = ANY(p_sessions) ORDER BY u.id FOR UPDATE) l;
  END IF;
  IF p_subscriptions AND p_skip_locked THEN
    SELECT coalesce(array_agg(l.s ORDER BY (l.s).id), '{}'), coalesce(array_agg((l.s).id ORDER BY (l.s).id), '{}')
      INTO subs, sub_ids
      FROM (SELECT s FROM subscriptions s
             WHERE s.id IN (SELECT u.subscription_id FROM usage_sessions u WHERE u.id = ANY(sessions))
             ORDER BY s.id FOR UPDATE SKIP LOCKED) l;
  ELSIF p_subscriptions THEN
    SELECT coalesce(array_agg(l.s ORDER BY (l.s).id), '{}'), coalesce(array_agg((l.s).id ORDER BY (l.s).id), '{}')
      INTO subs, sub_ids
      FROM (SELECT s FROM subscriptions s
             WHERE s.id IN (SELECT u.subscription_id FROM usage_sessions u WHERE u.id = ANY(sessions))
             ORDER BY s.id FOR UPDATE) l;
  END IF;
END $$;
