-- Migrations of a plan's subscribers from one price version to another
-- (billing.v1.PlanCatalogService.MigrateSubscribers; docs/design.md,
-- "Catalogue"). A migration schedules the change on each live subscription
-- pinned to from_version (subscriptions.next_plan_version); the renewal
-- order opened after it charges to_version and the period that order pays
-- pins to_version. A renewal order opened before keeps its version.
CREATE TABLE plan_migrations (
  id            uuid PRIMARY KEY,
  seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  plan_id       text NOT NULL REFERENCES plans(id),
  from_version  integer NOT NULL,
  to_version    integer NOT NULL,
  created_at    timestamptz NOT NULL,
  CHECK (from_version <> to_version),
  FOREIGN KEY (plan_id, from_version) REFERENCES plan_versions (plan_id, version),
  FOREIGN KEY (plan_id, to_version) REFERENCES plan_versions (plan_id, version)
);
CREATE INDEX plan_migrations_plan ON plan_migrations (plan_id, seq);

-- The subscriptions a migration scheduled: its progress is how many of
-- them run on to_version now.
CREATE TABLE plan_migration_subscriptions (
  migration_id     uuid NOT NULL REFERENCES plan_migrations(id),
  subscription_id  uuid NOT NULL REFERENCES subscriptions(id),
  PRIMARY KEY (migration_id, subscription_id)
);
CREATE INDEX plan_migration_subscriptions_sub ON plan_migration_subscriptions (subscription_id);

-- The version a subscription's next renewal buys, when a migration
-- scheduled one (NULL: its own plan_version). A column without a default:
-- no row is rewritten.
ALTER TABLE subscriptions ADD COLUMN next_plan_version integer;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_next_plan_version_fkey
  FOREIGN KEY (plan_id, next_plan_version) REFERENCES plan_versions (plan_id, version);
