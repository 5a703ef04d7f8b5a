//! Typed reads of environment variables. Every error names the variable, so a
//! bad deployment fails with one clear line instead of a panic trace.
use std::{str::FromStr, time::Duration};

#[derive(Debug, thiserror::Error)]
#[error("invalid value for {name}: {value:?} ({reason})")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Reads `name`, or `default` when it is unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    parse_or(name, env_opt(name), default)
}

fn parse_or<T>(name: &str, raw: Option<String>, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match raw {
        Some(v) => {
            v.trim().parse().map_err(|e: T::Err| ConfigError { name: name.to_owned(), value: v.clone(), reason: e.to_string() })
        }
        None => Ok(default),
    }
}

/// Reads an optional variable; empty counts as unset.
pub fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A database URL the process cannot run without was not given.
#[derive(Debug, thiserror::Error)]
#[error(
    "{var} (or DATABASE_URL) must be set to the postgres:// URL of {database}'s database; \
     the services never start a PostgreSQL of their own (`stack` and the tests do)"
)]
pub struct MissingDatabaseUrl {
    /// The service's own variable, e.g. `BILLING_DATABASE_URL`.
    pub var: String,
    /// The service's database, e.g. `billing`.
    pub database: String,
}

/// The URL a service's database commands use: `url` (read from `var`, else
/// `DATABASE_URL`), or a one-line error naming `var`. There is deliberately no
/// fallback: a replica without a URL must fail before it touches anything
/// (docs/design.md, "Development PostgreSQL").
pub fn require_database_url(url: Option<String>, var: &str, database: &str) -> Result<String, MissingDatabaseUrl> {
    url.ok_or_else(|| MissingDatabaseUrl { var: var.to_owned(), database: database.to_owned() })
}

/// Reads a comma-separated list; empty entries are dropped.
pub fn env_list(name: &str) -> Vec<String> {
    env_opt(name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

/// Reads a duration given in whole seconds.
pub fn env_secs(name: &str, default_secs: u64) -> Result<Duration, ConfigError> {
    env_or(name, default_secs).map(Duration::from_secs)
}

/// Reads a duration given in milliseconds.
pub fn env_millis(name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
    env_or(name, default_ms).map(Duration::from_millis)
}

/// Settings every service shares (pool, server limits, shutdown).
#[derive(Clone, Debug)]
pub struct CommonConfig {
    /// `DB_POOL_SIZE` (default 16): connections per replica.
    pub pool_size: u32,
    /// `DB_CONNECT_TIMEOUT_MS` (default 1500): how long an RPC waits for a
    /// pooled connection before it fails with UNAVAILABLE.
    pub connect_timeout: Duration,
    /// `MAX_CONCURRENT_REQUESTS` (default 512): requests beyond this are shed
    /// with UNAVAILABLE instead of queueing.
    pub max_concurrent_requests: usize,
    /// `SHUTDOWN_GRACE_SECS` (default 25): bound on draining in-flight RPCs.
    pub shutdown_grace: Duration,
    /// `GRPC_MAX_CONNECTION_AGE_SECS` (default 300, 0 = off): clients
    /// reconnect periodically so HTTP/2 load spreads across replicas.
    pub max_connection_age: Option<Duration>,
    /// `DB_LOCK_TIMEOUT_MS` (default 1000, 0 = server default): the longest a
    /// statement waits for a row lock before the RPC answers ABORTED.
    pub lock_timeout: Duration,
    /// `DB_STATEMENT_TIMEOUT_MS` (default 10000, 0 = server default): the
    /// longest one statement runs.
    pub statement_timeout: Duration,
}

impl CommonConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let age = env_or("GRPC_MAX_CONNECTION_AGE_SECS", 300u64)?;
        Ok(Self {
            pool_size: env_or("DB_POOL_SIZE", 16u32)?.max(1),
            connect_timeout: env_millis("DB_CONNECT_TIMEOUT_MS", 1500)?,
            max_concurrent_requests: env_or("MAX_CONCURRENT_REQUESTS", 512usize)?.max(1),
            shutdown_grace: env_secs("SHUTDOWN_GRACE_SECS", 25)?,
            max_connection_age: (age > 0).then(|| Duration::from_secs(age)),
            lock_timeout: env_millis("DB_LOCK_TIMEOUT_MS", 1000)?,
            statement_timeout: env_millis("DB_STATEMENT_TIMEOUT_MS", 10_000)?,
        })
    }
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_millis(1500),
            max_concurrent_requests: 512,
            shutdown_grace: Duration::from_secs(25),
            max_connection_age: Some(Duration::from_secs(300)),
            lock_timeout: Duration::from_millis(1000),
            statement_timeout: Duration::from_millis(10_000),
        }
    }
}

/// Environment variables of [`CommonConfig`], for `--help` texts.
pub const COMMON_ENV_HELP: &str = "\
  DB_POOL_SIZE                  connections per replica (16)
  DB_CONNECT_TIMEOUT_MS         wait for a pooled connection before UNAVAILABLE (1500)
  DB_LOCK_TIMEOUT_MS            longest wait for a row lock before ABORTED, 0 = server default (1000)
  DB_STATEMENT_TIMEOUT_MS       longest statement, 0 = server default (10000)
  MAX_CONCURRENT_REQUESTS       in-flight RPCs before shedding with UNAVAILABLE (512)
  SHUTDOWN_GRACE_SECS           bound on draining in-flight RPCs on SIGTERM (25)
  GRPC_MAX_CONNECTION_AGE_SECS  close client connections after this age, 0 = never (300)
  LOG_FORMAT                    json | pretty (pretty on a terminal, json otherwise)
  RUST_LOG                      log filter (info)
  OTEL_EXPORTER_OTLP_ENDPOINT   OTLP/gRPC collector; traces exported when set (unset)
  OTEL_SERVICE_NAME             service name in traces (the binary's name)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_value_names_the_variable() {
        let err = parse_or("DB_POOL_SIZE", Some("twelve".into()), 1u32).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("DB_POOL_SIZE") && e.contains("twelve")));
        assert_eq!(parse_or("DB_POOL_SIZE", Some(" 7 ".into()), 1u32).ok(), Some(7));
        assert_eq!(parse_or("DB_POOL_SIZE", None, 3u32).ok(), Some(3));
    }

    #[test]
    fn missing_database_url_is_one_line_naming_the_variable() {
        assert_eq!(
            require_database_url(Some("postgres://h/b".into()), "BILLING_DATABASE_URL", "billing").ok().as_deref(),
            Some("postgres://h/b")
        );
        let err = require_database_url(None, "BILLING_DATABASE_URL", "billing").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("BILLING_DATABASE_URL (or DATABASE_URL) must be set"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
