//! checkout's periodic jobs: cleanup (which runs the completion check first),
//! completion sync, and the purge of old idempotency keys. One pooled
//! connection per step, none held across a sleep or a billing call.
use chrono::Duration;
use tokio::task::JoinHandle;

use crate::{App, sessions};

pub const NAMES: &[&str] = &["cleanup", "completion-sync", "purge-idempotency-keys"];
const SYNC_BATCH: i64 = 500;

pub async fn run_once(app: &App, name: &str) -> anyhow::Result<String> {
    Ok(match name {
        "cleanup" => {
            let c = sessions::cleanup(app, false).await?;
            format!(
                "cleanup: expired {} deleted {} completed_by_sync {} skipped_billing_unavailable {}",
                c.expired, c.deleted, c.completed_by_sync, c.skipped_billing_unavailable
            )
        }
        "completion-sync" => {
            let c = sessions::completion_sync(app, SYNC_BATCH).await?;
            format!("completion-sync: checked {} completed {} orders cancelled {}", c.checked, c.completed, c.orders_cancelled)
        }
        "purge-idempotency-keys" => {
            let mut conn = app.conn().await?;
            let n = shared::idempotency::purge(&mut conn, app.clock.now() - Duration::hours(24)).await?;
            format!("purge-idempotency-keys: {n} deleted")
        }
        other => anyhow::bail!("unknown job {other:?}; jobs: {}", NAMES.join(", ")),
    })
}

pub fn spawn_all(app: &App, shutdown: &shared::server::Shutdown) -> Vec<JoinHandle<()>> {
    let j = &app.config.jobs;
    let jobs: Vec<_> =
        NAMES.iter().copied().zip([j.cleanup_interval, j.completion_sync_interval, j.idempotency_purge_interval]).collect();
    let app = app.clone();
    shared::jobs::spawn_all(&jobs, shutdown, move |name| {
        let app = app.clone();
        async move { run_once(&app, name).await }
    })
}
