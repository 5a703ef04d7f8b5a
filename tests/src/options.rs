//! The knobs of a test's services and the configurations built from them
//! (re-exported by [`crate::harness`]).
use std::{net::SocketAddr, time::Duration};

use shared::config::CommonConfig;

use crate::harness::{ADMIN_TOKEN, CHECKOUT_TO_BILLING_TOKEN, GATEWAY_KEY_SECRET, GATEWAY_WEBHOOK_SECRET, SERVICE_TOKEN};

/// Knobs for a test's services.
#[derive(Clone, Debug)]
pub struct Options {
    pub pool_size: u32,
    pub max_concurrent_requests: usize,
    /// How long a statement waits for a row lock (`DB_LOCK_TIMEOUT_MS`).
    /// Tests that hold a row themselves raise it, so that their waiters
    /// outlast a slow machine and the race is decided by the test's own
    /// release, not by the clock.
    pub lock_timeout: Duration,
    /// How long a request waits for a pooled connection
    /// (`DB_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// The event streams' settings (`EVENTS_*`).
    pub events: shared::config::EventsConfig,
}

impl Options {
    /// For race tests that queue dozens of requests on one row: the waits
    /// are bounded by the race, not by the production bounds, so a loaded
    /// machine cannot turn a queued request into ABORTED or UNAVAILABLE.
    pub fn patient() -> Self {
        Self { lock_timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(30), ..Self::default() }
    }
}

impl Default for Options {
    fn default() -> Self {
        let d = CommonConfig::default();
        Self {
            pool_size: 10,
            max_concurrent_requests: 512,
            lock_timeout: d.lock_timeout,
            connect_timeout: d.connect_timeout,
            events: d.events,
        }
    }
}

pub fn billing_config(opts: &Options) -> billing_svc::Config {
    billing_svc::Config {
        listen_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        database_url: None,
        auth_tokens: vec![SERVICE_TOKEN.into(), CHECKOUT_TO_BILLING_TOKEN.into()],
        admin_tokens: vec![ADMIN_TOKEN.into()],
        gateway: billing_svc::config::GatewayConfig {
            key_id: "rzp_test_sandbox".into(),
            key_secret: GATEWAY_KEY_SECRET.into(),
            webhook_secret: GATEWAY_WEBHOOK_SECRET.into(),
            ..Default::default()
        },
        jobs: billing_svc::config::JobsConfig { enabled: false, ..Default::default() },
        lifecycle: billing_svc::config::LifecycleConfig::default(),
        deduct: billing_svc::config::DeductConfig::default(),
        stuck_session_after: chrono::Duration::hours(24),
        common: common(opts),
    }
}

pub fn checkout_config(opts: &Options, billing_addr: SocketAddr) -> checkout_svc::Config {
    checkout_svc::Config {
        listen_addr: "127.0.0.1:0".into(),
        database_url: None,
        auth_tokens: vec![SERVICE_TOKEN.into()],
        admin_tokens: vec![ADMIN_TOKEN.into()],
        billing_endpoint: format!("http://{billing_addr}"),
        billing_token: CHECKOUT_TO_BILLING_TOKEN.into(),
        billing_timeout: Duration::from_secs(5),
        jobs: checkout_svc::config::JobsConfig { enabled: false, ..Default::default() },
        common: common(opts),
    }
}

fn common(opts: &Options) -> CommonConfig {
    CommonConfig {
        pool_size: opts.pool_size,
        max_concurrent_requests: opts.max_concurrent_requests,
        shutdown_grace: Duration::from_secs(5),
        lock_timeout: opts.lock_timeout,
        connect_timeout: opts.connect_timeout,
        events: opts.events.clone(),
        ..CommonConfig::default()
    }
}
