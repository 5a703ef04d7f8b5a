//! What every binary does around its own commands (checkout-svc,
//! billing-svc, `stack`): parse the command line, install telemetry, run,
//! report an error as one line; stop on SIGTERM or Ctrl-C; the `migrate`
//! command; and the part of `serve` both services share (pool metrics, the
//! gRPC server, jobs stopped and drained after it).
use std::{future::Future, process::ExitCode};

use clap::{CommandFactory, FromArgMatches};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    config::{self, CommonConfig},
    server::{self, Shutdown},
};

/// Runs a binary named `name`: parses `C` from the command line and the
/// environment (a bad value is one line naming its variable, before
/// anything starts; help, version and unknown arguments are clap's as
/// usual), installs telemetry, runs `run`, and reports its error as one line
/// `name: error` with exit status 1.
pub async fn main<C, F, Fut>(name: &'static str, run: F) -> ExitCode
where
    C: CommandFactory + FromArgMatches,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let cli = match config::matches_from(C::command(), std::env::args_os()) {
        Ok(m) => C::from_arg_matches(&m).unwrap_or_else(|e| e.exit()),
        Err(Ok(bad)) => {
            eprintln!("{name}: {bad}");
            return ExitCode::FAILURE;
        }
        Err(Err(e)) => e.exit(),
    };
    // Kept until the command is done, so its last spans and metrics are exported.
    let _telemetry = match crate::telemetry::init(name) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("{name}: telemetry: {e}");
            None
        }
    };
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A [`Shutdown`] that SIGTERM (Kubernetes) or Ctrl-C triggers.
pub fn shutdown_on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    // The handler is installed here, before the service says it is ready.
    let signal = server::termination_signal();
    tokio::spawn(async move {
        signal.await;
        trigger.trigger();
    });
    shutdown
}

/// The `migrate` command: runs `migrate` and says how many migrations it
/// applied.
pub async fn migrate_command(name: &str, migrate: impl Future<Output = anyhow::Result<Vec<String>>>) -> anyhow::Result<()> {
    let done = migrate.await?;
    println!("{name}: {} migration(s) applied", done.len());
    Ok(())
}

/// A service's gRPC server and what runs beside it, for [`serve`].
#[derive(Debug)]
pub struct Serving<S, V, M> {
    /// The named health service (e.g. `proto::BILLING_SERVICE_NAME`).
    pub service_name: &'static str,
    /// The pool's name in metrics (`billing`, `checkout`).
    pub pool_name: &'static str,
    /// The service, its auth interceptor applied.
    pub svc: S,
    /// The service's event stream (docs/design.md, "Events"), its auth
    /// interceptor applied.
    pub events: V,
    /// Where it serves.
    pub listener: TcpListener,
    /// The service's database, migrated on the way to SERVING.
    pub database_url: String,
    /// The service's pool, pinged on the way to SERVING.
    pub pool: crate::db::Pool,
    /// The service's migrations, run on the way to SERVING.
    pub migrate: M,
    /// The service's periodic jobs, spawned on the same [`Shutdown`].
    pub jobs: Vec<JoinHandle<()>>,
    /// Further services on the same listener (billing's plan catalogue).
    pub more: server::MoreServices,
}

/// Serves `s.svc` with [`server::serve`] until `shutdown`, observing the
/// pool meanwhile; then triggers `shutdown` (the server may also have
/// stopped with an error: whatever runs beside it stops too) and drains the
/// jobs, at most `config.shutdown_grace`.
pub async fn serve<S, B, V, VB, M, MF>(s: Serving<S, V, M>, config: &CommonConfig, shutdown: Shutdown) -> anyhow::Result<()>
where
    S: server::GrpcService<B>,
    B: server::GrpcBody,
    V: server::GrpcService<VB>,
    VB: server::GrpcBody,
    M: Fn(String) -> MF + Send + 'static,
    MF: Future<Output = anyhow::Result<Vec<String>>> + Send + 'static,
{
    let _pool_gauge = crate::metrics::observe_pool(s.pool_name, s.pool.clone());
    let result = server::serve(
        s.service_name,
        s.listener,
        s.svc,
        s.events,
        s.more,
        config,
        shutdown.clone(),
        s.database_url,
        s.pool,
        s.migrate,
    )
    .await;
    shutdown.trigger();
    crate::jobs::drain(s.jobs, config.shutdown_grace).await;
    result
}
