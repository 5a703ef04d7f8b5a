//! checkout-svc configuration, from environment variables. The clap
//! declarations below are the one source of each variable's name, default
//! and help text: `--help` is generated from them and a unit test checks
//! docs/configuration.md's table against them.
use std::time::Duration;

use shared::config::{CommonConfig, ConfigError, Secret, ServiceArgs, ServiceConfig, parse};

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Jobs (environment)")]
pub struct JobsConfig {
    /// Run the periodic jobs inside serve (true or false).
    #[arg(long = "jobs-enabled", env = "JOBS_ENABLED", default_value = "true", action = clap::ArgAction::Set, value_parser = parse::trimmed::<bool>)]
    pub enabled: bool,
    /// Seconds between cleanup runs (expiry and deletion of sessions).
    #[arg(long = "cleanup-interval-secs", env = "CLEANUP_INTERVAL_SECS", default_value = "300", value_parser = parse::secs)]
    pub cleanup_interval: Duration,
    /// Seconds between completion syncs (sessions paid at billing).
    #[arg(long = "completion-sync-interval-secs", env = "COMPLETION_SYNC_INTERVAL_SECS", default_value = "60", value_parser = parse::secs)]
    pub completion_sync_interval: Duration,
    /// Seconds between purges of idempotency keys older than 24 h.
    #[arg(long = "idempotency-purge-interval-secs", env = "IDEMPOTENCY_PURGE_INTERVAL_SECS", default_value = "3600", value_parser = parse::secs)]
    pub idempotency_purge_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        shared::config::defaults()
    }
}

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "checkout-svc (environment)")]
pub struct Config {
    /// gRPC listen address.
    #[arg(long = "checkout-listen-addr", env = "CHECKOUT_LISTEN_ADDR", default_value = "0.0.0.0:50051", value_parser = parse::trimmed::<String>)]
    pub listen_addr: String,
    /// postgres:// URL of checkout's own database (else DATABASE_URL); required by every command.
    #[arg(long = "checkout-database-url", env = "CHECKOUT_DATABASE_URL", hide_env_values = true, value_parser = parse::secret)]
    pub database_url: Option<Secret>,
    /// Comma-separated bearer tokens of callers (required by serve).
    #[arg(long = "checkout-auth-tokens", env = "CHECKOUT_AUTH_TOKENS", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret_list)]
    pub auth_tokens: std::vec::Vec<Secret>,
    /// Comma-separated admin bearer tokens (CleanupSessions).
    #[arg(long = "checkout-admin-tokens", env = "CHECKOUT_ADMIN_TOKENS", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret_list)]
    pub admin_tokens: std::vec::Vec<Secret>,
    /// Where billing-svc is.
    #[arg(long = "billing-endpoint", env = "BILLING_ENDPOINT", default_value = "http://127.0.0.1:50052", value_parser = parse::trimmed::<String>)]
    pub billing_endpoint: String,
    /// Bearer token checkout presents to billing (required by serve).
    #[arg(long = "billing-token", env = "BILLING_TOKEN", hide_env_values = true, default_value = "", hide_default_value = true, value_parser = parse::secret)]
    pub billing_token: Secret,
    /// Milliseconds of budget for billing calls when the caller sent no deadline.
    #[arg(long = "billing-timeout-ms", env = "BILLING_TIMEOUT_MS", default_value = "3000", value_parser = parse::millis)]
    pub billing_timeout: Duration,
    #[command(flatten)]
    pub jobs: JobsConfig,
    #[command(flatten)]
    pub common: CommonConfig,
}

/// Everything checkout-svc reads from the environment: [`Config`] and the
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
        shared::config::from_env::<Args>("checkout-svc").map(Args::into_config)
    }

    /// What `serve` needs beyond the other subcommands.
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        if self.auth_tokens.is_empty() {
            return Err(ConfigError::missing("CHECKOUT_AUTH_TOKENS", "at least one token must be set"));
        }
        if self.billing_token.is_empty() {
            return Err(ConfigError::missing("BILLING_TOKEN", "must be set"));
        }
        Ok(())
    }
}
