//! Wiring: the pool, the clock, the gateway, the gRPC service and the jobs.
use std::sync::Arc;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use proto::billing::v1::{
    billing_event_service_server::BillingEventServiceServer, billing_service_server::BillingServiceServer,
    plan_catalog_service_server::PlanCatalogServiceServer,
};
use shared::{Clock, auth::Authenticator, db, gate::Gate, server::Shutdown, service::Serving};
use tokio::net::TcpListener;

use crate::{
    config::{Config, GatewayKind},
    gateway::{Gateway, Razorpay, Sandbox},
};

/// Requests naming one row (a user, a usage session, an order) that may hold
/// pooled connections at once; they serialize on the row's lock anyway.
const GATE_PER_KEY: usize = 4;
/// How long a request waits for its row's turn, holding no connection: a
/// burst on one row (a webhook storm, a hot session) queues here and is
/// served in turn; only a row held for long turns the queue into ABORTED.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
/// The live SQL functions, applied after the migrations (docs/design.md,
/// SQL functions): one file each in `sql/functions/`, after the shared ones.
pub const FUNCTIONS: &[db::SqlFunction] = shared::sql_functions![
    shared touch_updated_at, events_emit;
    billing_period_at,
    billing_renewal_paid,
    billing_roll_steps,
    billing_roll_period,
    billing_charge_lock,
    billing_charge_subscription,
    billing_charge_item,
    billing_charge_set_based,
    billing_charge_many,
    billing_charge_batch,
    billing_charge,
    billing_order_events,
    billing_subscription_events,
    billing_refund_events,
    billing_discrepancy_events,
    billing_usage_session_events,
    billing_plan_change_events,
    billing_subscription_ended_changes,
    billing_plan_version_immutable,
    billing_plan_version_default,
];
/// Advisory-lock key under which replicas run migrations one at a time.
const MIGRATION_LOCK: i64 = 0x0b11_11b6;

/// Everything a request or a job needs.
#[derive(Clone, Debug)]
pub struct App {
    pub pool: db::Pool,
    /// Per-row admission: a held row cannot take every pooled connection.
    pub gate: Arc<Gate>,
    pub clock: Clock,
    pub gateway: Arc<dyn Gateway>,
    pub config: Arc<Config>,
    /// Group commit of Deduct calls (docs/design.md, Performance).
    pub deducts: Arc<crate::deductions::Coalescer>,
    /// The replica's event tail (docs/design.md, "Events").
    pub events: shared::events::Hub<crate::grpc::Event>,
}

impl App {
    pub fn new(config: Config, database_url: &str, clock: Clock) -> Self {
        let gateway: Arc<dyn Gateway> = match config.gateway.kind {
            GatewayKind::Sandbox => Arc::new(Sandbox::new(config.gateway.clone())),
            GatewayKind::Razorpay => Arc::new(Razorpay::new(config.gateway.clone())),
        };
        Self::with_gateway(config, database_url, clock, gateway)
    }

    /// Like [`App::new`] with a given gateway (tests drive a sandbox whose
    /// charge switch they hold).
    pub fn with_gateway(config: Config, database_url: &str, clock: Clock, gateway: Arc<dyn Gateway>) -> Self {
        let pool = db::pool(database_url, &config.common);
        let gate = Arc::new(Gate::new(GATE_PER_KEY, GATE_WAIT.max(config.common.lock_timeout)));
        let deducts = Arc::new(crate::deductions::Coalescer::new(
            pool.clone(),
            gate.clone(),
            clock.clone(),
            config.deduct.batch_max,
            config.deduct.batches_in_flight,
        ));
        let events = crate::grpc::event_hub(pool.clone(), &config.common.events);
        Self { pool, gate, clock, gateway, config: Arc::new(config), deducts, events }
    }

    pub async fn conn(&self) -> Result<db::PooledConn<'_>, crate::Error> {
        Ok(db::conn(&self.pool).await?)
    }
}

/// Runs migrations under an advisory lock (safe with many replicas).
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    db::migrate(database_url, MIGRATIONS, FUNCTIONS, MIGRATION_LOCK).await
}

/// Serves billing's gRPC on `listener` and the gateway's webhook endpoint on
/// `http_listener` until `shutdown`; migrates on the way to SERVING; runs the
/// periodic jobs when enabled.
pub async fn serve(
    config: Config,
    database_url: String,
    listener: TcpListener,
    http_listener: TcpListener,
    clock: Clock,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    serve_app(App::new(config, &database_url, clock), database_url, listener, http_listener, shutdown).await
}

/// [`serve`] with an assembled [`App`] (the tests give it the sandbox whose
/// switches they hold).
pub async fn serve_app(
    app: App,
    database_url: String,
    listener: TcpListener,
    http_listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let http = tokio::spawn(crate::http::serve(app.clone(), http_listener, shutdown.clone(), app.config.common.shutdown_grace));
    let auth = Authenticator::from_secrets(&app.config.auth_tokens, &app.config.admin_tokens);
    let svc = BillingServiceServer::with_interceptor(crate::grpc::BillingGrpc::new(app.clone()), auth.clone());
    let catalog = PlanCatalogServiceServer::with_interceptor(crate::grpc::PlanCatalogGrpc::new(app.clone()), auth.clone());
    let events =
        BillingEventServiceServer::with_interceptor(crate::grpc::BillingEventGrpc::new(app.clone(), shutdown.clone()), auth);
    tokio::spawn(app.events.clone().run(database_url.clone(), shutdown.clone()));
    let jobs = if app.config.jobs.enabled { crate::jobs::spawn_all(&app, &shutdown) } else { Vec::new() };
    let serving = Serving {
        service_name: proto::BILLING_SERVICE_NAME,
        pool_name: "billing",
        svc,
        events,
        listener,
        database_url,
        pool: app.pool.clone(),
        migrate: |url: String| async move { migrate(&url).await },
        jobs,
        more: shared::server::MoreServices::none().with(catalog),
    };
    // Once the gRPC server stopped (shutdown, or an error), `shutdown` has
    // fired: the webhook endpoint stops too.
    let result = shared::service::serve(serving, &app.config.common, shutdown).await;
    match http.await {
        Ok(Err(e)) => tracing::error!(error = %e, "webhook endpoint failed"),
        Err(e) => tracing::error!(error = %e, "webhook endpoint task failed"),
        Ok(Ok(())) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sql_function_file_is_listed_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/functions");
        shared::db::check_listed(&dir, super::FUNCTIONS).unwrap();
    }
}
