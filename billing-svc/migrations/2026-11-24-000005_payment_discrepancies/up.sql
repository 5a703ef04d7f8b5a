-- Money taken that buys nothing: a late payment of an order a newer one
-- superseded, a payment of a cancelled order, a second payment of a paid
-- order, a payment whose amount or order does not match. One row per gateway
-- payment, OPEN until it is refunded or an operator acknowledges it with a
-- note (both audited). Reconciliation reports every OPEN row and keeps
-- failing until then; `--fix` never closes one.
CREATE TABLE payment_discrepancies (
  id            bigserial PRIMARY KEY,
  payment_id    text NOT NULL UNIQUE,
  order_id      text,
  kind          text NOT NULL CHECK (kind IN ('ORDER_SUPERSEDED', 'ORDER_CANCELLED', 'SECOND_PAYMENT',
                                              'AMOUNT_MISMATCH', 'UNKNOWN_ORDER', 'RECORDED_BEFORE_CLASSIFICATION')),
  amount_minor  bigint,
  currency      text,
  status        text NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'ACKNOWLEDGED', 'REFUNDED')),
  source        text NOT NULL CHECK (source IN ('VERIFY_PAYMENT', 'WEBHOOK', 'RECONCILE')),
  detail        text NOT NULL,
  note          text,
  created_at    timestamptz NOT NULL,
  resolved_at   timestamptz,
  CHECK ((status = 'OPEN') = (resolved_at IS NULL)),
  CHECK (status <> 'ACKNOWLEDGED' OR length(note) > 0)
);
CREATE INDEX payment_discrepancies_open_idx ON payment_discrepancies (created_at) WHERE status = 'OPEN';

-- Discrepancies recorded before this table existed lived in the webhook
-- inbox; some were closed by `reconcile --fix` without a refund. Reopen all,
-- one per payment (VerifyPayment's rows name it in the event id, webhooks in
-- the body).
CREATE FUNCTION pg_temp.payment_id_of(b bytea) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RETURN convert_from(b, 'UTF8')::jsonb #>> '{payload,payment,entity,id}';
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$;
INSERT INTO payment_discrepancies (payment_id, order_id, kind, status, source, detail, created_at)
SELECT coalesce(CASE WHEN event_id LIKE 'verify:%' THEN nullif(split_part(event_id, ':', 3), '') END,
                pg_temp.payment_id_of(body), 'event:' || event_id), order_id,
       'RECORDED_BEFORE_CLASSIFICATION', 'OPEN',
       CASE WHEN event_id LIKE 'verify:%' THEN 'VERIFY_PAYMENT' ELSE 'WEBHOOK' END,
       detail, received_at
  FROM webhook_events
 WHERE outcome IN ('DISCREPANCY', 'DISCREPANCY_REVIEWED')
ON CONFLICT (payment_id) DO NOTHING;
UPDATE webhook_events SET outcome = 'DISCREPANCY' WHERE outcome = 'DISCREPANCY_REVIEWED';

-- Webhook events whose content was refused (unparsable, fields out of
-- bounds) are stored and acknowledged to the gateway, then reviewed.
ALTER TABLE webhook_events ADD COLUMN reviewed_note text;
CREATE INDEX webhook_events_rejected_idx ON webhook_events (received_at) WHERE outcome = 'REJECTED' AND reviewed_note IS NULL;

-- Creation order of orders, strictly increasing even when two orders share a
-- timestamp: a capture never replaces a subscription bought by a newer order.
-- Existing orders are numbered by creation time (a bigserial would number
-- them in their order on disk).
ALTER TABLE orders ADD COLUMN seq bigint;
UPDATE orders o SET seq = r.n
  FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM orders) r WHERE r.id = o.id;
CREATE SEQUENCE orders_seq_seq OWNED BY orders.seq;
SELECT setval('orders_seq_seq', coalesce((SELECT max(seq) FROM orders), 0) + 1, false);
ALTER TABLE orders ALTER COLUMN seq SET DEFAULT nextval('orders_seq_seq'), ALTER COLUMN seq SET NOT NULL;
ALTER TABLE orders ADD CONSTRAINT orders_seq_key UNIQUE (seq);

-- Audit rows of operators' acknowledgements carry their note.
ALTER TABLE reconcile_audit ADD COLUMN note text;

-- billing_period_at: defined by billing-svc/sql/functions/billing_period_at.sql, applied by the
-- migration runner after the migrations (docs/design.md, SQL functions).

-- billing_roll_period: defined by billing-svc/sql/functions/billing_roll_period.sql, applied by the
-- migration runner after the migrations (docs/design.md, SQL functions).
