//! checkout-svc configuration, from environment variables only.
use std::time::Duration;

use shared::config::{CommonConfig, ConfigError, env_list, env_millis, env_opt, env_or, env_secs};

pub const ENV_HELP: &str = "\
Environment (default in parentheses):
  CHECKOUT_LISTEN_ADDR          gRPC listen address (0.0.0.0:50051)
  CHECKOUT_DATABASE_URL         postgres://… of checkout's own database; falls back to
                                DATABASE_URL, else 127.0.0.1:5432 or a private
                                cluster under target/ (database \"checkout\")
  CHECKOUT_AUTH_TOKENS          comma-separated bearer tokens of callers (required by serve)
  CHECKOUT_ADMIN_TOKENS         comma-separated admin bearer tokens (none)
  BILLING_ENDPOINT              billing-svc address (http://127.0.0.1:50052)
  BILLING_TOKEN                 bearer token checkout presents to billing (required by serve)
  BILLING_TIMEOUT_MS            budget for billing calls when the caller set no deadline (3000)
  JOBS_ENABLED                  run periodic jobs inside serve (true)
  CLEANUP_INTERVAL_SECS         expiry/deletion job tick (300)
  COMPLETION_SYNC_INTERVAL_SECS paid-at-billing sync tick (60)
  IDEMPOTENCY_PURGE_INTERVAL_SECS  purge of 24 h old idempotency keys (3600)";

#[derive(Clone, Debug)]
pub struct JobsConfig {
    pub enabled: bool,
    pub cleanup_interval: Duration,
    pub completion_sync_interval: Duration,
    pub idempotency_purge_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cleanup_interval: Duration::from_secs(300),
            completion_sync_interval: Duration::from_secs(60),
            idempotency_purge_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen_addr: String,
    pub database_url: Option<String>,
    pub auth_tokens: Vec<String>,
    pub admin_tokens: Vec<String>,
    pub billing_endpoint: String,
    pub billing_token: String,
    pub billing_timeout: Duration,
    pub jobs: JobsConfig,
    pub common: CommonConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            listen_addr: env_or("CHECKOUT_LISTEN_ADDR", "0.0.0.0:50051".to_owned())?,
            database_url: env_opt("CHECKOUT_DATABASE_URL").or_else(|| env_opt("DATABASE_URL")),
            auth_tokens: env_list("CHECKOUT_AUTH_TOKENS"),
            admin_tokens: env_list("CHECKOUT_ADMIN_TOKENS"),
            billing_endpoint: env_or("BILLING_ENDPOINT", "http://127.0.0.1:50052".to_owned())?,
            billing_token: env_opt("BILLING_TOKEN").unwrap_or_default(),
            billing_timeout: env_millis("BILLING_TIMEOUT_MS", 3000)?,
            jobs: JobsConfig {
                enabled: env_or("JOBS_ENABLED", true)?,
                cleanup_interval: env_secs("CLEANUP_INTERVAL_SECS", 300)?,
                completion_sync_interval: env_secs("COMPLETION_SYNC_INTERVAL_SECS", 60)?,
                idempotency_purge_interval: env_secs("IDEMPOTENCY_PURGE_INTERVAL_SECS", 3600)?,
            },
            common: CommonConfig::from_env()?,
        })
    }

    /// What `serve` needs beyond the other subcommands.
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        let missing = |name: &str, reason: &str| ConfigError { name: name.into(), value: String::new(), reason: reason.into() };
        if self.auth_tokens.is_empty() {
            return Err(missing("CHECKOUT_AUTH_TOKENS", "at least one token must be set"));
        }
        if self.billing_token.is_empty() {
            return Err(missing("BILLING_TOKEN", "must be set"));
        }
        Ok(())
    }
}
