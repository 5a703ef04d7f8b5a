//! Wiring: the pool, the clock, the billing client, the gRPC service, jobs.
use std::sync::Arc;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use proto::checkout::v1::{
    checkout_event_service_server::CheckoutEventServiceServer, checkout_service_server::CheckoutServiceServer,
};
use shared::{Clock, auth::Authenticator, db, server::Shutdown, service::Serving};
use tokio::net::TcpListener;

use crate::{billing::Billing, config::Config};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
/// The live SQL functions, applied after the migrations (docs/design.md,
/// SQL functions): the shared ones and the sessions' event trigger.
pub const FUNCTIONS: &[db::SqlFunction] = shared::sql_functions![shared touch_updated_at, events_emit; checkout_session_events];
/// Advisory-lock key under which replicas run migrations one at a time.
const MIGRATION_LOCK: i64 = 0x0c4e_c0de;

#[derive(Clone, Debug)]
pub struct App {
    pub pool: db::Pool,
    pub clock: Clock,
    pub billing: Billing,
    pub config: Arc<Config>,
    /// The replica's event tail (docs/design.md, "Events").
    pub events: shared::events::Hub<crate::grpc::Event>,
}

impl App {
    pub fn new(config: Config, database_url: &str, clock: Clock) -> anyhow::Result<Self> {
        let pool = db::pool(database_url, &config.common);
        let billing = Billing::new(&config.billing_endpoint, config.billing_token.expose())?;
        let events = crate::grpc::event_hub(pool.clone(), &config.common.events);
        Ok(Self { pool, clock, billing, config: Arc::new(config), events })
    }

    pub async fn conn(&self) -> Result<db::PooledConn<'_>, crate::Error> {
        Ok(db::conn(&self.pool).await?)
    }
}

pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    db::migrate(database_url, MIGRATIONS, FUNCTIONS, MIGRATION_LOCK).await
}

/// Serves checkout on `listener` until `shutdown`; migrates on the way to
/// SERVING; runs the periodic jobs when enabled.
pub async fn serve(
    config: Config,
    database_url: String,
    listener: TcpListener,
    clock: Clock,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let app = App::new(config, &database_url, clock)?;
    let auth = Authenticator::from_secrets(&app.config.auth_tokens, &app.config.admin_tokens);
    let svc = CheckoutServiceServer::with_interceptor(crate::grpc::CheckoutGrpc::new(app.clone()), auth.clone());
    let events =
        CheckoutEventServiceServer::with_interceptor(crate::grpc::CheckoutEventGrpc::new(app.clone(), shutdown.clone()), auth);
    tokio::spawn(app.events.clone().run(database_url.clone(), shutdown.clone()));
    let jobs = if app.config.jobs.enabled { crate::jobs::spawn_all(&app, &shutdown) } else { Vec::new() };
    let serving = Serving {
        service_name: proto::CHECKOUT_SERVICE_NAME,
        pool_name: "checkout",
        svc,
        events,
        listener,
        database_url,
        pool: app.pool.clone(),
        migrate: |url: String| async move { migrate(&url).await },
        jobs,
        more: shared::server::MoreServices::none(),
    };
    shared::service::serve(serving, &app.config.common, shutdown).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sql_function_file_is_listed_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/functions");
        shared::db::check_listed(&dir, super::FUNCTIONS).unwrap();
    }
}
