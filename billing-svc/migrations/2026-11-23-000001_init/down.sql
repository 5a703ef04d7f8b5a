DROP TABLE IF EXISTS usage_stats_daily, reconcile_audit, idempotency_keys, deductions, ledger,
  usage_sessions, webhook_events, subscriptions, orders, plans;
DROP FUNCTION IF EXISTS touch_updated_at();
