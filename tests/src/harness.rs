//! Spawns both services in-process for a test (see the crate docs).
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use chrono::{TimeZone, Utc};
use shared::{
    Clock,
    server::{Shutdown, listen},
};
use test_support::pg::PgServer;
use tokio::sync::OnceCell;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::clients::{BillingClient, CatalogClient, CheckoutClient, billing_client, catalog_client, checkout_client};
pub use crate::options::{Options, billing_config, checkout_config};

pub const SERVICE_TOKEN: &str = "test-service-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const CHECKOUT_TO_BILLING_TOKEN: &str = "test-checkout-to-billing-token";
pub const GATEWAY_KEY_SECRET: &str = "test-gateway-key-secret";
pub const GATEWAY_WEBHOOK_SECRET: &str = "test-gateway-webhook-secret";

/// Where the services under test listen: a fresh port each.
const LOCALHOST_ANY_PORT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

static SERVER: OnceCell<PgServer> = OnceCell::const_new();
static TELEMETRY: std::sync::OnceLock<Option<shared::telemetry::TelemetryGuard>> = std::sync::OnceLock::new();

/// Installs this process's telemetry with `init` instead of the
/// `shared::telemetry::init("tests")` that [`spawn_app`] does on first use
/// (e.g. `shared::telemetry::init_with_exporters` with in-memory exporters).
/// Call it before the first `spawn_app`. Returns the guard (to force-flush),
/// or `None` when telemetry was already initialised or `init` failed.
pub fn init_telemetry(
    init: impl FnOnce() -> anyhow::Result<shared::telemetry::TelemetryGuard>,
) -> Option<&'static shared::telemetry::TelemetryGuard> {
    let mut ran = false;
    let guard = TELEMETRY.get_or_init(|| {
        ran = true;
        init().ok()
    });
    if ran { guard.as_ref() } else { None }
}

/// The PostgreSQL server tests use (`test_support::pg`, docs/design.md
/// "Development PostgreSQL"), once per process.
pub async fn pg() -> anyhow::Result<&'static PgServer> {
    SERVER.get_or_try_init(|| async { PgServer::resolve(&workspace_root().join("target/pg")).await }).await
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn hash_dir(dir: &Path, h: &mut DefaultHasher) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            hash_dir(&p, h);
        } else if let Ok(bytes) = std::fs::read(&p) {
            p.file_name().hash(h);
            bytes.hash(h);
        }
    }
}

/// A fresh database for `service`, copied from a template migrated once per
/// schema version (the template name carries a hash of the migrations and of
/// the SQL function files, docs/design.md "SQL functions").
pub async fn fresh_database(
    service: &str,
    migrate: fn(String) -> futures::future::BoxFuture<'static, anyhow::Result<Vec<String>>>,
) -> anyhow::Result<String> {
    let server = pg().await?;
    let mut h = DefaultHasher::new();
    hash_dir(&workspace_root().join(format!("{service}/migrations")), &mut h);
    hash_dir(&workspace_root().join(format!("{service}/sql")), &mut h);
    hash_dir(&workspace_root().join("shared/sql"), &mut h);
    let template = format!("tmpl_{}_{:016x}", service.replace('-', "_"), h.finish());
    let name = format!("test_{}_{}", service.replace('-', "_"), uuid::Uuid::new_v4().simple());
    // One lock for template creation and copies: CREATE DATABASE ... TEMPLATE
    // fails while anyone is connected to the template.
    server
        .with_lock(0x7e57_0001, async || {
            if server.ensure_database(&template, None).await?
                && let Err(e) = migrate(server.url(&template)).await
            {
                let _ = server.drop_database(&template).await;
                return Err(e);
            }
            server.ensure_database(&name, Some(&template)).await?;
            Ok(())
        })
        .await?;
    Ok(server.url(&name))
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default().to_owned()
}

/// Both services, their databases, clients and the shared manual clock.
pub struct TestApp {
    pub clock: Clock,
    pub checkout_addr: SocketAddr,
    pub billing_addr: SocketAddr,
    /// billing's webhook endpoint (HTTP).
    pub billing_http_addr: SocketAddr,
    /// Clients with a service token.
    pub checkout: CheckoutClient,
    pub billing: BillingClient,
    /// Clients with an admin token.
    pub checkout_admin: CheckoutClient,
    pub billing_admin: BillingClient,
    /// billing's plan catalogue, with an admin token.
    pub catalog: CatalogClient,
    pub checkout_db_url: String,
    pub billing_db_url: String,
    /// Library handles on the same databases and clock, for running jobs.
    pub checkout_app: checkout_svc::App,
    pub billing_app: billing_svc::App,
    pub gateway: billing_svc::gateway::Sandbox,
    /// The knobs the services were started with; restarts reuse them.
    opts: Options,
    checkout_shutdown: Shutdown,
    billing_shutdown: Shutdown,
    checkout_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    billing_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Panics (it is test set-up) when the services cannot start.
pub async fn spawn_app_with(opts: Options) -> TestApp {
    match try_spawn(opts).await {
        Ok(app) => app,
        Err(e) => panic!("spawn_app failed: {e:#}"),
    }
}

async fn try_spawn(opts: Options) -> anyhow::Result<TestApp> {
    TELEMETRY.get_or_init(|| shared::telemetry::init_quiet("tests").ok());
    let clock = Clock::manual(Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).single().unwrap_or_default());
    let billing_db_url = fresh_database("billing-svc", |u| Box::pin(async move { billing_svc::app::migrate(&u).await })).await?;
    let checkout_db_url =
        fresh_database("checkout-svc", |u| Box::pin(async move { checkout_svc::app::migrate(&u).await })).await?;

    let billing_listener = listen(LOCALHOST_ANY_PORT)?;
    let billing_addr = billing_listener.local_addr()?;
    let billing_http_listener = listen(LOCALHOST_ANY_PORT)?;
    let billing_http_addr = billing_http_listener.local_addr()?;
    let billing_shutdown = Shutdown::new();
    let bcfg = billing_config(&opts);
    // One sandbox for the served billing and the test-side App (jobs run by
    // hand): a test flips its charge and refund switches for both.
    let gateway = billing_svc::gateway::Sandbox::new(bcfg.gateway.clone());
    let billing_task = tokio::spawn(billing_svc::serve_app(
        billing_svc::App::with_gateway(bcfg.clone(), &billing_db_url, clock.clone(), std::sync::Arc::new(gateway.clone())),
        billing_db_url.clone(),
        billing_listener,
        billing_http_listener,
        billing_shutdown.clone(),
    ));

    let checkout_listener = listen(LOCALHOST_ANY_PORT)?;
    let checkout_addr = checkout_listener.local_addr()?;
    let checkout_shutdown = Shutdown::new();
    let ccfg = checkout_config(&opts, billing_addr);
    let checkout_task = tokio::spawn(checkout_svc::serve(
        ccfg.clone(),
        checkout_db_url.clone(),
        checkout_listener,
        clock.clone(),
        checkout_shutdown.clone(),
    ));

    wait_serving(&billing_addr.to_string(), proto::BILLING_SERVICE_NAME).await?;
    wait_serving(&checkout_addr.to_string(), proto::CHECKOUT_SERVICE_NAME).await?;

    Ok(TestApp {
        checkout: checkout_client(&checkout_addr.to_string(), SERVICE_TOKEN)?,
        billing: billing_client(&billing_addr.to_string(), SERVICE_TOKEN)?,
        checkout_admin: checkout_client(&checkout_addr.to_string(), ADMIN_TOKEN)?,
        billing_admin: billing_client(&billing_addr.to_string(), ADMIN_TOKEN)?,
        catalog: catalog_client(&billing_addr.to_string(), ADMIN_TOKEN)?,
        checkout_app: checkout_svc::App::new(ccfg, &checkout_db_url, clock.clone())?,
        billing_app: billing_svc::App::with_gateway(bcfg, &billing_db_url, clock.clone(), std::sync::Arc::new(gateway.clone())),
        gateway,
        opts,
        clock,
        checkout_addr,
        billing_addr,
        billing_http_addr,
        checkout_db_url,
        billing_db_url,
        checkout_shutdown,
        billing_shutdown,
        checkout_task: Some(checkout_task),
        billing_task: Some(billing_task),
    })
}

/// Waits until the named health service reports SERVING (at most 30 s).
pub async fn wait_serving(addr: &str, service: &str) -> anyhow::Result<()> {
    let mut client = HealthClient::new(crate::clients::channel(addr)?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.check(HealthCheckRequest { service: service.to_owned() }).await.map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{service} at {addr} did not become SERVING: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestApp {
    /// A direct connection to checkout's database (for assertions).
    pub async fn checkout_db(&self) -> diesel_async::AsyncPgConnection {
        connect(&self.checkout_db_url).await
    }

    /// A direct connection to billing's database (for assertions).
    pub async fn billing_db(&self) -> diesel_async::AsyncPgConnection {
        connect(&self.billing_db_url).await
    }

    /// Stops checkout-svc (graceful) and waits for it.
    pub async fn stop_checkout(&mut self) {
        self.checkout_shutdown.trigger();
        if let Some(t) = self.checkout_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Stops billing-svc (graceful) and waits for it.
    pub async fn stop_billing(&mut self) {
        self.billing_shutdown.trigger();
        if let Some(t) = self.billing_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Starts checkout-svc again on the same database and a new port (a
    /// restart); clients are rebuilt.
    pub async fn restart_checkout(&mut self) -> anyhow::Result<()> {
        self.stop_checkout().await;
        let listener = listen(LOCALHOST_ANY_PORT)?;
        self.checkout_addr = listener.local_addr()?;
        self.checkout_shutdown = Shutdown::new();
        let cfg = checkout_config(&self.opts, self.billing_addr);
        self.checkout_task = Some(tokio::spawn(checkout_svc::serve(
            cfg,
            self.checkout_db_url.clone(),
            listener,
            self.clock.clone(),
            self.checkout_shutdown.clone(),
        )));
        wait_serving(&self.checkout_addr.to_string(), proto::CHECKOUT_SERVICE_NAME).await?;
        self.checkout = checkout_client(&self.checkout_addr.to_string(), SERVICE_TOKEN)?;
        self.checkout_admin = checkout_client(&self.checkout_addr.to_string(), ADMIN_TOKEN)?;
        Ok(())
    }

    /// Starts billing-svc again on the same database and port.
    pub async fn start_billing_again(&mut self) -> anyhow::Result<()> {
        let listener = listen(self.billing_addr)?;
        let http_listener = listen(self.billing_http_addr)?;
        self.billing_shutdown = Shutdown::new();
        let app = billing_svc::App::with_gateway(
            billing_config(&self.opts),
            &self.billing_db_url,
            self.clock.clone(),
            std::sync::Arc::new(self.gateway.clone()),
        );
        self.billing_task = Some(tokio::spawn(billing_svc::serve_app(
            app,
            self.billing_db_url.clone(),
            listener,
            http_listener,
            self.billing_shutdown.clone(),
        )));
        wait_serving(&self.billing_addr.to_string(), proto::BILLING_SERVICE_NAME).await
    }
}

pub async fn connect(url: &str) -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection;
    match diesel_async::AsyncPgConnection::establish(url).await {
        Ok(c) => c,
        Err(e) => panic!("connect {url}: {e}"),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.checkout_shutdown.trigger();
        self.billing_shutdown.trigger();
        let names = [db_name(&self.checkout_db_url), db_name(&self.billing_db_url)];
        // Drop the databases on a separate runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(server) = PgServer::resolve(&workspace_root().join("target/pg")).await {
                    for n in names {
                        let _ = server.drop_database(&n).await;
                    }
                    std::mem::forget(server); // never stop a shared cluster here
                }
            });
        })
        .join();
    }
}
