-- Not reversible without losing lifecycle state (PAST_DUE, EXPIRED,
-- refunds, renewal orders); restore from a backup instead.
SELECT 1;
