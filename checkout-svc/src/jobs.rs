//! checkout's periodic jobs: cleanup (which runs the completion check first),
//! completion sync, and the purge of old idempotency keys. One pooled
//! connection per step, none held across a sleep or a billing call.
use chrono::Duration;
use tokio::task::JoinHandle;

use crate::{App, sessions};

/// A periodic job, as `checkout-svc jobs run-once <job>` takes it: this
/// enum is the one list of jobs; the command line, its `--help` (each
/// variant's first doc line), [`run_once`] and [`spawn_all`] all follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Job {
    /// Expire ACTIVE sessions past 24 h, delete unpaid ones older than 7 days (completion check first).
    Cleanup,
    /// Ask billing about open sessions' orders and complete the paid ones.
    CompletionSync,
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
            Job::Cleanup => "cleanup",
            Job::CompletionSync => "completion-sync",
            Job::PurgeIdempotencyKeys => "purge-idempotency-keys",
            Job::PurgeEvents => "purge-events",
        }
    }
}

const SYNC_BATCH: i64 = 500;

/// Runs one iteration of job `name`; returns a one-line summary.
pub async fn run_once(app: &App, name: &str) -> anyhow::Result<String> {
    let Ok(job) = <Job as clap::ValueEnum>::from_str(name, false) else {
        let names: Vec<&str> = <Job as clap::ValueEnum>::value_variants().iter().map(|j| j.name()).collect();
        anyhow::bail!("unknown job {name:?}; jobs: {}", names.join(", "))
    };
    Ok(match job {
        Job::Cleanup => {
            let c = sessions::cleanup(app, false).await?;
            format!(
                "cleanup: expired {} deleted {} completed_by_sync {} skipped_billing_unavailable {}",
                c.expired, c.deleted, c.completed_by_sync, c.skipped_billing_unavailable
            )
        }
        Job::CompletionSync => {
            let c = sessions::completion_sync(app, SYNC_BATCH).await?;
            format!("completion-sync: checked {} completed {} orders cancelled {}", c.checked, c.completed, c.orders_cancelled)
        }
        Job::PurgeIdempotencyKeys => {
            let mut conn = app.conn().await?;
            let n = shared::idempotency::purge(&mut conn, app.clock.now() - Duration::hours(24)).await?;
            format!("purge-idempotency-keys: {n} deleted")
        }
        Job::PurgeEvents => {
            let mut conn = app.conn().await?;
            let days = app.config.common.events.retention_days;
            shared::events::store::purge_job(&mut conn, app.clock.now(), days).await?
        }
    })
}

pub fn spawn_all(app: &App, shutdown: &shared::server::Shutdown) -> Vec<JoinHandle<()>> {
    let j = &app.config.jobs;
    let jobs: Vec<_> = <Job as clap::ValueEnum>::value_variants()
        .iter()
        .map(|&job| {
            let every = match job {
                Job::Cleanup => j.cleanup_interval,
                Job::CompletionSync => j.completion_sync_interval,
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
