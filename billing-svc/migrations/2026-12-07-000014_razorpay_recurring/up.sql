-- Razorpay's documented recurring flow for cards (docs/design.md, "The
-- gateway"): a customer per user, a purchase order that registers a card
-- mandate with limits, and later charges that send what the payment entity
-- said (email, contact) and stay within the mandate.

-- The gateway's customer of each user, created once and reused by every
-- later purchase (the mandate's token belongs to it).
CREATE TABLE gateway_customers (
  user_id     text PRIMARY KEY,
  customer_id text NOT NULL,
  created_at  timestamptz NOT NULL
);

-- The mandate a purchase order registers: the most one later charge may
-- take and when the mandate ends. NULL: a plain order.
ALTER TABLE orders
  ADD COLUMN mandate_max_amount_minor bigint CHECK (mandate_max_amount_minor > 0),
  ADD COLUMN mandate_expires_at timestamptz,
  ADD CONSTRAINT orders_mandate_check CHECK ((mandate_max_amount_minor IS NULL) = (mandate_expires_at IS NULL));

-- What a recurring charge of the saved method needs beyond customer and
-- token: the payment entity's email and contact, and the mandate's limits
-- (a charge above the maximum or after the end is never attempted).
ALTER TABLE subscriptions
  ADD COLUMN gateway_email text,
  ADD COLUMN gateway_contact text,
  ADD COLUMN mandate_max_amount_minor bigint,
  ADD COLUMN mandate_expires_at timestamptz;
