//! billing's periodic jobs. Each iteration takes one pooled connection and
//! returns it before the sleep (docs/design.md, Jobs); each is safe on every replica
//! (`FOR UPDATE SKIP LOCKED` or idempotent upserts) and safe to run twice.
use chrono::Duration;
use tokio::task::JoinHandle;

use crate::{App, deductions, renewals, stats, subscriptions};

/// A periodic job, as `billing-svc jobs run-once <job>` takes it: this enum
/// is the one list of jobs; the command line, its `--help` (each variant's
/// first doc line), [`run_once`] and [`spawn_all`] all follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Job {
    /// Charge every ACTIVE usage session with a complete interval due.
    AutoDeduct,
    /// Roll subscriptions past their period end: open the next period, go PAST_DUE or end.
    Rollover,
    /// Expire PAST_DUE subscriptions past grace, open renewal orders, charge saved cards.
    Renewals,
    /// Recompute the daily usage rollup per plan for today and yesterday.
    UsageStats,
    /// Delete idempotency keys older than 24 h.
    PurgeIdempotencyKeys,
    /// Delete events older than EVENTS_RETENTION_DAYS.
    PurgeEvents,
}

impl Job {
    /// The command-line spelling (clap's kebab-case of the variant; a unit
    /// test holds the two together).
    pub fn name(self) -> &'static str {
        match self {
            Job::AutoDeduct => "auto-deduct",
            Job::Rollover => "rollover",
            Job::Renewals => "renewals",
            Job::UsageStats => "usage-stats",
            Job::PurgeIdempotencyKeys => "purge-idempotency-keys",
            Job::PurgeEvents => "purge-events",
        }
    }

    /// Every job's name, for messages.
    fn names() -> String {
        <Job as clap::ValueEnum>::value_variants().iter().map(|j| j.name()).collect::<Vec<_>>().join(", ")
    }
}
const BATCH: i64 = 200;

/// Runs one iteration of job `name`; returns a one-line summary.
pub async fn run_once(app: &App, name: &str) -> anyhow::Result<String> {
    let Ok(job) = <Job as clap::ValueEnum>::from_str(name, false) else {
        anyhow::bail!("unknown job {name:?}; jobs: {}", Job::names())
    };
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    Ok(match job {
        Job::AutoDeduct => {
            let (sessions, credits) = deductions::auto_deduct_due(&mut conn, now, BATCH).await?;
            format!("auto-deduct: {sessions} sessions, {credits} credits charged")
        }
        Job::Rollover => {
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
        Job::Renewals => {
            drop(conn);
            let s = renewals::run_once(app, now, BATCH).await?;
            format!(
                "renewals: {} expired, {} renewal orders created, {} charges captured, {} not captured",
                s.expired, s.orders_created, s.charged, s.declined
            )
        }
        Job::UsageStats => format!("usage-stats: {} (day, plan) rows", stats::rollup(&mut conn, now).await?),
        Job::PurgeIdempotencyKeys => {
            let n = shared::idempotency::purge(&mut conn, now - Duration::hours(24)).await?;
            format!("purge-idempotency-keys: {n} deleted")
        }
        Job::PurgeEvents => shared::events::store::purge_job(&mut conn, now, app.config.common.events.retention_days).await?,
    })
}

pub fn spawn_all(app: &App, shutdown: &shared::server::Shutdown) -> Vec<JoinHandle<()>> {
    let j = &app.config.jobs;
    let jobs: Vec<_> = <Job as clap::ValueEnum>::value_variants()
        .iter()
        .map(|&job| {
            let every = match job {
                Job::AutoDeduct => j.auto_deduct_interval,
                Job::Rollover => j.rollover_interval,
                Job::Renewals => j.renewals_interval,
                Job::UsageStats => j.usage_stats_interval,
                // Both purges are housekeeping on the same schedule.
                Job::PurgeIdempotencyKeys | Job::PurgeEvents => j.idempotency_purge_interval,
            };
            (job.name(), every)
        })
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

    use super::Job;

    #[test]
    fn job_names_are_the_command_line_spellings() {
        for j in Job::value_variants() {
            assert_eq!(j.to_possible_value().map(|v| v.get_name().to_owned()), Some(j.name().to_owned()));
            assert!(j.to_possible_value().and_then(|v| v.get_help().map(|h| !h.to_string().is_empty())) == Some(true), "{j:?}");
        }
    }
}
