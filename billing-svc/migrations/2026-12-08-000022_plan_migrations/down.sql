ALTER TABLE subscriptions DROP COLUMN next_plan_version;
DROP TABLE plan_migration_subscriptions;
DROP TABLE plan_migrations;
