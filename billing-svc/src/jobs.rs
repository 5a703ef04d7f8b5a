//! billing's periodic jobs. Each iteration takes one pooled connection and
//! returns it before the sleep (docs/design.md, Jobs); each is safe on every replica
//! (`FOR UPDATE SKIP LOCKED` or idempotent upserts) and safe to run twice.
use chrono::Duration;
use tokio::task::JoinHandle;

use crate::{App, deductions, renewals, stats, subscriptions};

pub const NAMES: &[&str] = &["auto-deduct", "rollover", "renewals", "usage-stats", "purge-idempotency-keys"];

/// A job by name, as `billing-svc jobs run-once <job>` takes it (the names of
/// [`NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Job {
    #[value(name = "auto-deduct")]
    AutoDeduct,
    #[value(name = "rollover")]
    Rollover,
    #[value(name = "renewals")]
    Renewals,
    #[value(name = "usage-stats")]
    UsageStats,
    #[value(name = "purge-idempotency-keys")]
    PurgeIdempotencyKeys,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::AutoDeduct => "auto-deduct",
            Job::Rollover => "rollover",
            Job::Renewals => "renewals",
            Job::UsageStats => "usage-stats",
            Job::PurgeIdempotencyKeys => "purge-idempotency-keys",
        }
    }
}
const BATCH: i64 = 200;

/// Runs one iteration of job `name`; returns a one-line summary.
pub async fn run_once(app: &App, name: &str) -> anyhow::Result<String> {
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    Ok(match name {
        "auto-deduct" => {
            let (sessions, credits) = deductions::auto_deduct_due(&mut conn, now, BATCH).await?;
            format!("auto-deduct: {sessions} sessions, {credits} credits charged")
        }
        "rollover" => {
            let mut rolled = 0;
            loop {
                let n = subscriptions::roll_due(&mut conn, now, BATCH).await?;
                rolled += n;
                if (n as i64) < BATCH {
                    break;
                }
            }
            format!("rollover: {rolled} subscriptions past their period end (opened, PAST_DUE or ended)")
        }
        "renewals" => {
            drop(conn);
            let s = renewals::run_once(app, now, BATCH).await?;
            format!(
                "renewals: {} expired, {} renewal orders created, {} charges captured, {} not captured",
                s.expired, s.orders_created, s.charged, s.declined
            )
        }
        "usage-stats" => format!("usage-stats: {} (day, plan) rows", stats::rollup(&mut conn, now).await?),
        "purge-idempotency-keys" => {
            let n = shared::idempotency::purge(&mut conn, now - Duration::hours(24)).await?;
            format!("purge-idempotency-keys: {n} deleted")
        }
        other => anyhow::bail!("unknown job {other:?}; jobs: {}", NAMES.join(", ")),
    })
}

pub fn spawn_all(app: &App, shutdown: &shared::server::Shutdown) -> Vec<JoinHandle<()>> {
    let j = &app.config.jobs;
    let jobs: Vec<_> = NAMES
        .iter()
        .copied()
        .zip([
            j.auto_deduct_interval,
            j.rollover_interval,
            j.renewals_interval,
            j.usage_stats_interval,
            j.idempotency_purge_interval,
        ])
        .collect();
    let app = app.clone();
    shared::jobs::spawn_all(&jobs, shutdown, move |name| {
        let app = app.clone();
        async move { run_once(&app, name).await }
    })
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::{Job, NAMES};

    #[test]
    fn job_names_are_the_command_line_spellings() {
        let names: Vec<&str> = Job::value_variants().iter().map(|j| j.name()).collect();
        assert_eq!(names, NAMES);
        for j in Job::value_variants() {
            assert_eq!(j.to_possible_value().map(|v| v.get_name().to_owned()), Some(j.name().to_owned()));
        }
    }
}
