//! billing-svc configuration, from environment variables only.
use std::time::Duration;

use shared::config::{CommonConfig, ConfigError, env_list, env_millis, env_opt, env_or, env_secs};

pub const ENV_HELP: &str = "\
Environment (default in parentheses):
  BILLING_LISTEN_ADDR           gRPC listen address (0.0.0.0:50052)
  BILLING_HTTP_ADDR             webhook endpoint for the payment gateway, HTTP (0.0.0.0:8080)
  BILLING_DATABASE_URL          postgres://… of billing's own database; falls back to
                                DATABASE_URL, else 127.0.0.1:5432 or a private
                                cluster under target/ (database \"billing\")
  BILLING_AUTH_TOKENS           comma-separated bearer tokens of callers (required)
  BILLING_ADMIN_TOKENS          comma-separated admin bearer tokens (none)
  GATEWAY                       payment gateway: sandbox or razorpay (sandbox)
  GATEWAY_KEY_ID                gateway key id (rzp_test_sandbox; required for razorpay)
  GATEWAY_KEY_SECRET            gateway key secret: API calls and payment signatures (required)
  GATEWAY_WEBHOOK_SECRET        secret for webhook signatures (required)
  GATEWAY_API_BASE_URL          razorpay: API base URL (https://api.razorpay.com)
  GATEWAY_TIMEOUT_MS            razorpay: timeout of one API call (5000)
  SANDBOX_FAIL_CHARGES          sandbox: decline every charge of a saved method (false)
  JOBS_ENABLED                  run periodic jobs inside serve (true)
  AUTO_DEDUCT_INTERVAL_SECS     auto-deduction tick (30)
  ROLLOVER_INTERVAL_SECS        billing-period rollover tick (60)
  USAGE_STATS_INTERVAL_SECS     usage rollup tick (300)
  IDEMPOTENCY_PURGE_INTERVAL_SECS  purge of 24 h old idempotency keys (3600)
  STUCK_SESSION_HOURS           reconcile flags ACTIVE usage sessions older than this (24)
  CHECKOUT_ENDPOINT             reconcile: also list paid orders checkout does not know (unset)
  CHECKOUT_TOKEN                reconcile: bearer token for CHECKOUT_ENDPOINT";

/// Which payment gateway billing talks to (`GATEWAY`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GatewayKind {
    /// The built-in sandbox: no network, the default for `stack` and tests.
    #[default]
    Sandbox,
    Razorpay,
}

impl std::str::FromStr for GatewayKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sandbox" => Ok(Self::Sandbox),
            "razorpay" => Ok(Self::Razorpay),
            _ => Err("expected sandbox or razorpay".into()),
        }
    }
}

pub const DEFAULT_GATEWAY_API_BASE_URL: &str = "https://api.razorpay.com";
pub const DEFAULT_GATEWAY_KEY_ID: &str = "rzp_test_sandbox";

#[derive(Clone)]
pub struct GatewayConfig {
    pub key_id: String,
    pub key_secret: String,
    pub webhook_secret: String,
    pub kind: GatewayKind,
    /// Razorpay's API base URL, without `/v1`.
    pub api_base_url: String,
    /// Timeout of one API call to the gateway.
    pub timeout: Duration,
    /// Sandbox only: every charge of a saved method is declined.
    pub sandbox_fail_charges: bool,
}

impl Default for GatewayConfig {
    /// The sandbox, with empty secrets.
    fn default() -> Self {
        Self {
            key_id: DEFAULT_GATEWAY_KEY_ID.into(),
            key_secret: String::new(),
            webhook_secret: String::new(),
            kind: GatewayKind::Sandbox,
            api_base_url: DEFAULT_GATEWAY_API_BASE_URL.into(),
            timeout: Duration::from_millis(5000),
            sandbox_fail_charges: false,
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    // The secrets never reach a log or a Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("kind", &self.kind)
            .field("key_id", &self.key_id)
            .field("api_base_url", &self.api_base_url)
            .field("timeout", &self.timeout)
            .field("sandbox_fail_charges", &self.sandbox_fail_charges)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct JobsConfig {
    pub enabled: bool,
    pub auto_deduct_interval: Duration,
    pub rollover_interval: Duration,
    pub usage_stats_interval: Duration,
    pub idempotency_purge_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auto_deduct_interval: Duration::from_secs(30),
            rollover_interval: Duration::from_secs(60),
            usage_stats_interval: Duration::from_secs(300),
            idempotency_purge_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen_addr: String,
    /// `BILLING_HTTP_ADDR`: where the payment gateway posts webhooks.
    pub http_addr: String,
    /// None: resolve with the embedded-default bootstrap.
    pub database_url: Option<String>,
    pub auth_tokens: Vec<String>,
    pub admin_tokens: Vec<String>,
    pub gateway: GatewayConfig,
    pub jobs: JobsConfig,
    pub stuck_session_after: chrono::Duration,
    pub common: CommonConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            listen_addr: env_or("BILLING_LISTEN_ADDR", "0.0.0.0:50052".to_owned())?,
            http_addr: env_or("BILLING_HTTP_ADDR", "0.0.0.0:8080".to_owned())?,
            database_url: env_opt("BILLING_DATABASE_URL").or_else(|| env_opt("DATABASE_URL")),
            auth_tokens: env_list("BILLING_AUTH_TOKENS"),
            admin_tokens: env_list("BILLING_ADMIN_TOKENS"),
            gateway: GatewayConfig {
                key_id: env_or("GATEWAY_KEY_ID", DEFAULT_GATEWAY_KEY_ID.to_owned())?,
                key_secret: env_opt("GATEWAY_KEY_SECRET").unwrap_or_default(),
                webhook_secret: env_opt("GATEWAY_WEBHOOK_SECRET").unwrap_or_default(),
                kind: env_or("GATEWAY", GatewayKind::Sandbox)?,
                api_base_url: env_or("GATEWAY_API_BASE_URL", DEFAULT_GATEWAY_API_BASE_URL.to_owned())?,
                timeout: env_millis("GATEWAY_TIMEOUT_MS", 5000)?,
                sandbox_fail_charges: env_or("SANDBOX_FAIL_CHARGES", false)?,
            },
            jobs: JobsConfig {
                enabled: env_or("JOBS_ENABLED", true)?,
                auto_deduct_interval: env_secs("AUTO_DEDUCT_INTERVAL_SECS", 30)?,
                rollover_interval: env_secs("ROLLOVER_INTERVAL_SECS", 60)?,
                usage_stats_interval: env_secs("USAGE_STATS_INTERVAL_SECS", 300)?,
                idempotency_purge_interval: env_secs("IDEMPOTENCY_PURGE_INTERVAL_SECS", 3600)?,
            },
            stuck_session_after: chrono::Duration::hours(env_or("STUCK_SESSION_HOURS", 24i64)?),
            common: CommonConfig::from_env()?,
        })
    }

    /// What `serve` needs beyond the other subcommands (migrate and reconcile
    /// run without tokens or gateway secrets).
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        let missing = |name: &str, reason: &str| ConfigError { name: name.into(), value: String::new(), reason: reason.into() };
        if self.auth_tokens.is_empty() {
            return Err(missing("BILLING_AUTH_TOKENS", "at least one token must be set"));
        }
        if self.gateway.key_secret.is_empty() {
            return Err(missing("GATEWAY_KEY_SECRET", "must be set"));
        }
        if self.gateway.webhook_secret.is_empty() {
            return Err(missing("GATEWAY_WEBHOOK_SECRET", "must be set"));
        }
        if self.gateway.kind == GatewayKind::Razorpay {
            if self.gateway.key_id.is_empty() || self.gateway.key_id == DEFAULT_GATEWAY_KEY_ID {
                return Err(missing("GATEWAY_KEY_ID", "must be set to the Razorpay key id when GATEWAY=razorpay"));
            }
            let url = &self.gateway.api_base_url;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError {
                    name: "GATEWAY_API_BASE_URL".into(),
                    value: url.clone(),
                    reason: "must be an http(s):// URL".into(),
                });
            }
        }
        if self.gateway.timeout.is_zero() {
            return Err(ConfigError { name: "GATEWAY_TIMEOUT_MS".into(), value: "0".into(), reason: "must be positive".into() });
        }
        Ok(())
    }
}
