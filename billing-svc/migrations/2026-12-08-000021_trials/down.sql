DROP INDEX subscriptions_one_trial_per_user_and_plan;
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_trial_check;
ALTER TABLE subscriptions DROP COLUMN trial_end;
