-- Whether the period of `p_sub` starting at `p_period_start` is paid: its
-- renewal order is PAID, its payment is not money owed back (no
-- discrepancy recorded for it, e.g. the subscription was cancelled after the
-- renewal was paid) and it is not refunded in full.
CREATE OR REPLACE FUNCTION billing_renewal_paid(p_sub uuid, p_period_start timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT EXISTS (
    SELECT 1 FROM orders o
     WHERE o.renews_subscription_id = p_sub AND o.renews_period_start = p_period_start AND o.status = 'PAID'
       AND NOT EXISTS (SELECT 1 FROM payment_discrepancies d WHERE d.payment_id = o.payment_id)
       AND o.amount_minor > coalesce((SELECT sum(r.amount_minor) FROM refunds r
                                       WHERE r.payment_id = o.payment_id AND r.status <> 'FAILED'), 0))
$$;
