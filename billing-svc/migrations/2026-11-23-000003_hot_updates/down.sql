ALTER TABLE subscriptions RESET (fillfactor);
ALTER TABLE usage_sessions RESET (fillfactor);
