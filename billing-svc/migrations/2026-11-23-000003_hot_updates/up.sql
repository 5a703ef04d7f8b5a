-- Balances and usage counters are updated on every deduction. Leaving room
-- on each page lets PostgreSQL update those rows in place (HOT updates), so
-- a deduction does not also write every index of both tables.
ALTER TABLE subscriptions SET (fillfactor = 70);
ALTER TABLE usage_sessions SET (fillfactor = 70);
