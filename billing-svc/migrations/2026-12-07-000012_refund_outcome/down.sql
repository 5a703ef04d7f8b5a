-- Discrepancies reopened by the up migration stay OPEN (their money has not
-- been shown to move); only the claim columns go.
ALTER TABLE refunds DROP COLUMN asking_until, DROP COLUMN attempts;
