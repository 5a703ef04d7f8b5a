//! Periodic background jobs (docs/design.md, Jobs): a job takes a pooled connection
//! per iteration only, never across the sleep; a failed iteration is logged
//! and retried with backoff; shutdown waits for the running iteration instead
//! of cancelling it halfway.
use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;

use crate::server::Shutdown;

/// Runs `iteration` every `interval` until `shutdown`.
pub fn spawn_periodic<F, Fut>(name: &'static str, interval: Duration, shutdown: Shutdown, mut iteration: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<String>> + Send,
{
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let wait = if failures == 0 {
                interval
            } else {
                // 1 s, 2 s, 4 s ... 64 s, but never longer than the interval.
                Duration::from_secs(1u64 << (failures - 1).min(6)).min(interval.max(Duration::from_secs(1)))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => break,
            }
            let result = iteration().await;
            // What it committed may have written events.
            crate::events::nudge();
            crate::metrics::job_run(name, result.is_ok());
            match result {
                Ok(summary) => {
                    failures = 0;
                    tracing::debug!(job = name, %summary, "job iteration done");
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(job = name, error = %e, failures, "job iteration failed; backing off");
                }
            }
        }
        tracing::info!(job = name, "job stopped");
    })
}

/// Spawns every `(name, interval)` job with [`spawn_periodic`]; `run(name)`
/// runs one iteration of the named job.
pub fn spawn_all<F, Fut>(jobs: &[(&'static str, Duration)], shutdown: &Shutdown, run: F) -> Vec<JoinHandle<()>>
where
    F: Fn(&'static str) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<String>> + Send,
{
    jobs.iter()
        .map(|&(name, every)| {
            let run = run.clone();
            spawn_periodic(name, every, shutdown.clone(), move || run(name))
        })
        .collect()
}

/// Waits for job tasks to finish their current iteration, at most `grace`.
pub async fn drain(handles: Vec<JoinHandle<()>>, grace: Duration) {
    let all = futures::future::join_all(handles);
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("jobs did not stop within the grace period");
    }
}
