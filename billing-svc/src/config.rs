//! billing-svc configuration, from environment variables. The clap
//! declarations below are the one source of each variable's name, default
//! and help text: `--help` is generated from them and a unit test checks
//! docs/configuration.md's table against them.
use std::time::Duration;

use shared::config::{CommonConfig, ConfigError, Secret, ServiceArgs, ServiceConfig, parse};

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

pub const DEFAULT_GATEWAY_KEY_ID: &str = "rzp_test_sandbox";

/// Shortest renewal lead with Razorpay: its card mandates are debited 36 h
/// 5 min after the pre-debit notification it sends when the charge is made.
pub const MIN_RAZORPAY_RENEWAL_LEAD_HOURS: i64 = 37;

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Payment gateway (environment)")]
pub struct GatewayConfig {
    /// Gateway key id (handed to the checkout widget; Razorpay API user); must be the real key id for razorpay.
    #[arg(long = "gateway-key-id", env = "GATEWAY_KEY_ID", default_value = DEFAULT_GATEWAY_KEY_ID, value_parser = parse::trimmed::<String>)]
    pub key_id: String,
    /// Gateway key secret: HMAC key of payment signatures, Razorpay API password (required by serve).
    #[arg(long = "gateway-key-secret", env = "GATEWAY_KEY_SECRET", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret)]
    pub key_secret: Secret,
    /// HMAC key of webhook signatures (required by serve).
    #[arg(long = "gateway-webhook-secret", env = "GATEWAY_WEBHOOK_SECRET", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret)]
    pub webhook_secret: Secret,
    /// Payment gateway: sandbox (built in, no network) or razorpay.
    #[arg(long = "gateway", env = "GATEWAY", default_value = "sandbox", value_parser = parse::trimmed::<GatewayKind>)]
    pub kind: GatewayKind,
    /// razorpay: API base URL, without /v1.
    #[arg(long = "gateway-api-base-url", env = "GATEWAY_API_BASE_URL", default_value = "https://api.razorpay.com", value_parser = parse::trimmed::<String>)]
    pub api_base_url: String,
    /// razorpay: milliseconds one API call may take (must be positive).
    #[arg(long = "gateway-timeout-ms", env = "GATEWAY_TIMEOUT_MS", default_value = "5000", value_parser = parse::millis)]
    pub timeout: Duration,
    /// razorpay: register a recurring card mandate with every purchase (true or false). Such an order can
    /// only be paid by card, so it is off unless chosen; off, renewals are paid through checkout.
    #[arg(long = "razorpay-card-mandates", env = "RAZORPAY_CARD_MANDATES", default_value = "false", action = clap::ArgAction::Set, value_parser = parse::trimmed::<bool>)]
    pub card_mandates: bool,
    /// sandbox: decline every charge of a saved payment method (true or false).
    #[arg(long = "sandbox-fail-charges", env = "SANDBOX_FAIL_CHARGES", default_value = "false", action = clap::ArgAction::Set, value_parser = parse::trimmed::<bool>)]
    pub sandbox_fail_charges: bool,
}

impl Default for GatewayConfig {
    /// The sandbox, with empty secrets.
    fn default() -> Self {
        shared::config::defaults()
    }
}

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Jobs (environment)")]
pub struct JobsConfig {
    /// Run the periodic jobs inside serve (true or false).
    #[arg(long = "jobs-enabled", env = "JOBS_ENABLED", default_value = "true", action = clap::ArgAction::Set, value_parser = parse::trimmed::<bool>)]
    pub enabled: bool,
    /// Seconds between auto-deduction runs.
    #[arg(long = "auto-deduct-interval-secs", env = "AUTO_DEDUCT_INTERVAL_SECS", default_value = "30", value_parser = parse::secs)]
    pub auto_deduct_interval: Duration,
    /// Seconds between billing-period rollover runs.
    #[arg(long = "rollover-interval-secs", env = "ROLLOVER_INTERVAL_SECS", default_value = "60", value_parser = parse::secs)]
    pub rollover_interval: Duration,
    /// Seconds between renewal job runs (expire unpaid past grace, create renewal orders, charge saved methods).
    #[arg(long = "renewals-interval-secs", env = "RENEWALS_INTERVAL_SECS", default_value = "60", value_parser = parse::secs)]
    pub renewals_interval: Duration,
    /// Seconds between daily usage rollups.
    #[arg(long = "usage-stats-interval-secs", env = "USAGE_STATS_INTERVAL_SECS", default_value = "300", value_parser = parse::secs)]
    pub usage_stats_interval: Duration,
    /// Seconds between purges of idempotency keys older than 24 h.
    #[arg(long = "idempotency-purge-interval-secs", env = "IDEMPOTENCY_PURGE_INTERVAL_SECS", default_value = "3600", value_parser = parse::secs)]
    pub idempotency_purge_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        shared::config::defaults()
    }
}

/// The subscription lifecycle's clock (docs/design.md, "Subscription lifecycle").
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Subscription lifecycle (environment)")]
pub struct LifecycleConfig {
    /// Hours before period_end from which the renewal order exists and is collected.
    #[arg(long = "renewal-lead-hours", env = "RENEWAL_LEAD_HOURS", default_value = "72", value_parser = parse::hours)]
    pub renewal_lead: chrono::Duration,
    /// Hours a subscription stays PAST_DUE (no credits, charge retried) before it expires.
    #[arg(long = "grace-period-hours", env = "GRACE_PERIOD_HOURS", default_value = "72", value_parser = parse::hours)]
    pub grace_period: chrono::Duration,
    /// Hours between attempts to charge a saved payment method for a renewal.
    #[arg(long = "renewal-retry-hours", env = "RENEWAL_RETRY_HOURS", default_value = "24", value_parser = parse::hours)]
    pub renewal_retry: chrono::Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        shared::config::defaults()
    }
}

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Deductions (environment)")]
pub struct DeductConfig {
    /// Coalesce concurrent Deduct calls: one statement, one transaction and one commit per batch (true or false).
    #[arg(long = "deduct-coalesce", env = "DEDUCT_COALESCE", default_value = "true", action = clap::ArgAction::Set, value_parser = parse::trimmed::<bool>)]
    pub coalesce: bool,
    /// Most Deduct calls in one batch (min 1).
    #[arg(long = "deduct-batch-max", env = "DEDUCT_BATCH_MAX", default_value = "64", value_parser = parse::at_least_one_usize)]
    pub batch_max: usize,
    /// Batches in the database at once (min 1); each holds one pooled connection.
    #[arg(long = "deduct-batches-in-flight", env = "DEDUCT_BATCHES_IN_FLIGHT", default_value = "1", value_parser = parse::at_least_one_usize)]
    pub batches_in_flight: usize,
}

impl Default for DeductConfig {
    fn default() -> Self {
        shared::config::defaults()
    }
}

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "billing-svc (environment)")]
pub struct Config {
    /// gRPC listen address.
    #[arg(long = "billing-listen-addr", env = "BILLING_LISTEN_ADDR", default_value = "0.0.0.0:50052", value_parser = parse::trimmed::<String>)]
    pub listen_addr: String,
    /// HTTP listener of the payment gateway's webhooks (POST /webhooks/razorpay, GET /healthz); `sandbox pay --webhook` posts there.
    #[arg(long = "billing-http-addr", env = "BILLING_HTTP_ADDR", default_value = "0.0.0.0:8080", value_parser = parse::trimmed::<String>)]
    pub http_addr: String,
    /// postgres:// URL of billing's own database (else DATABASE_URL); required by every command but `sandbox pay`.
    #[arg(long = "billing-database-url", env = "BILLING_DATABASE_URL", hide_env_values = true, value_parser = parse::secret)]
    pub database_url: Option<Secret>,
    /// Comma-separated bearer tokens of callers, checkout's included (required by serve).
    #[arg(long = "billing-auth-tokens", env = "BILLING_AUTH_TOKENS", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret_list)]
    pub auth_tokens: std::vec::Vec<Secret>,
    /// Comma-separated admin bearer tokens (RunReconciliation, ListFindings, GetUsageStats).
    #[arg(long = "billing-admin-tokens", env = "BILLING_ADMIN_TOKENS", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret_list)]
    pub admin_tokens: std::vec::Vec<Secret>,
    #[command(flatten)]
    pub gateway: GatewayConfig,
    #[command(flatten)]
    pub jobs: JobsConfig,
    #[command(flatten)]
    pub lifecycle: LifecycleConfig,
    #[command(flatten)]
    pub deduct: DeductConfig,
    /// Hours after which reconcile flags an ACTIVE usage session as stuck.
    #[arg(long = "stuck-session-hours", env = "STUCK_SESSION_HOURS", default_value = "24", value_parser = parse::hours)]
    pub stuck_session_after: chrono::Duration,
    #[command(flatten)]
    pub common: CommonConfig,
}

/// Everything billing-svc reads from the environment: [`Config`] and the
/// variables only the binary uses.
pub type Args = ServiceArgs<Config>;

impl ServiceConfig for Config {
    fn database_url_mut(&mut self) -> &mut Option<Secret> {
        &mut self.database_url
    }
}

impl Config {
    /// Reads the configuration from the environment alone.
    pub fn from_env() -> Result<Self, ConfigError> {
        shared::config::from_env::<Args>("billing-svc").map(Args::into_config)
    }

    /// What `serve` needs beyond the other subcommands (migrate and reconcile
    /// run without tokens or gateway secrets).
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        let missing = ConfigError::missing;
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
            // A card mandate is debited about 36 hours after Razorpay's
            // pre-debit notification: a renewal charged later than that
            // before period_end cannot be captured in time.
            if self.lifecycle.renewal_lead < chrono::Duration::hours(MIN_RAZORPAY_RENEWAL_LEAD_HOURS) {
                return Err(ConfigError {
                    name: "RENEWAL_LEAD_HOURS".into(),
                    value: self.lifecycle.renewal_lead.num_hours().to_string(),
                    reason: format!(
                        "must be at least {MIN_RAZORPAY_RENEWAL_LEAD_HOURS} with GATEWAY=razorpay (card mandates are debited 36 hours after the pre-debit notification)"
                    ),
                });
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
