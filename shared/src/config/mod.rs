//! Typed reads of environment variables. Every error names the variable, so a
//! bad deployment fails with one clear line instead of a panic trace.
//!
//! The services' variables are declared once, as clap arguments with `env`
//! (name, default and help text together): [`CommonConfig`] here and each
//! service's `config.rs`. `--help` is generated from the declarations,
//! [`from_env`] reads them without a command line, [`defaults`] gives the
//! declared defaults, and [`check_env_table`] holds docs/configuration.md's table to
//! them. Secrets are [`Secret`]s, whose `Debug` never prints them.
use std::{str::FromStr, time::Duration};

/// A variable with a value the process cannot use, or a required one unset.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {name}: {value:?} ({reason})")]
pub struct ConfigError {
    /// The variable, e.g. `BILLING_AUTH_TOKENS`.
    pub name: String,
    /// The value given (empty when unset).
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl ConfigError {
    /// `name` is required (by the command at hand) and was not given.
    pub fn missing(name: &str, reason: &str) -> Self {
        Self { name: name.into(), value: String::new(), reason: reason.into() }
    }
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
pub fn require_database_url(url: Option<Secret>, var: &str, database: &str) -> Result<String, MissingDatabaseUrl> {
    url.map(|u| u.expose().to_owned()).ok_or_else(|| MissingDatabaseUrl { var: var.to_owned(), database: database.to_owned() })
}

/// A secret (gateway key, webhook key, bearer token). `Debug` never prints
/// it, so a secret cannot reach a log through a `{:?}` of its config; the
/// value is read with [`Secret::expose`], at the one place that needs it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for signing, comparing or sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (unset).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secrets of a list, for APIs that take plain strings.
    pub fn expose_all(secrets: &[Secret]) -> Vec<String> {
        secrets.iter().map(|s| s.0.clone()).collect()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(<empty>)" } else { "Secret(<redacted>)" })
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

mod cli_help;
mod env_table;
mod events;
pub mod parse;

pub use cli_help::{check_commands_section, check_help_complete, command_paths, env_only_as_variables};
pub use env_table::{DeclaredEnv, check_env_table, declared_env};
pub use events::EventsConfig;

/// Settings every service shares (pool, server limits, shutdown). The clap
/// declaration is the one source of each variable's name, default and help.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Database and server (environment)")]
pub struct CommonConfig {
    /// Connections per replica (min 1).
    #[arg(long = "db-pool-size", env = "DB_POOL_SIZE", default_value = "16", value_parser = parse::at_least_one_u32)]
    pub pool_size: u32,
    /// Milliseconds an RPC waits for a pooled connection before it fails with UNAVAILABLE.
    #[arg(long = "db-connect-timeout-ms", env = "DB_CONNECT_TIMEOUT_MS", default_value = "1500", value_parser = parse::millis)]
    pub connect_timeout: Duration,
    /// In-flight RPCs beyond this are shed with UNAVAILABLE instead of queueing (min 1).
    #[arg(
        long = "max-concurrent-requests",
        env = "MAX_CONCURRENT_REQUESTS",
        default_value = "512",
        value_parser = parse::at_least_one_usize
    )]
    pub max_concurrent_requests: usize,
    /// Seconds to drain in-flight RPCs on SIGTERM.
    #[arg(long = "shutdown-grace-secs", env = "SHUTDOWN_GRACE_SECS", default_value = "25", value_parser = parse::secs)]
    pub shutdown_grace: Duration,
    /// Seconds after which client connections are closed (GOAWAY), so HTTP/2 load spreads across replicas; 0 = never.
    #[arg(
        long = "grpc-max-connection-age-secs",
        env = "GRPC_MAX_CONNECTION_AGE_SECS",
        default_value = "300",
        value_parser = parse::secs_or_never
    )]
    pub max_connection_age: std::option::Option<Duration>,
    /// Milliseconds a statement waits for a row lock before the RPC answers ABORTED; 0 = server default.
    #[arg(long = "db-lock-timeout-ms", env = "DB_LOCK_TIMEOUT_MS", default_value = "1000", value_parser = parse::millis)]
    pub lock_timeout: Duration,
    /// Milliseconds one statement may run (then ABORTED); 0 = server default.
    #[arg(
        long = "db-statement-timeout-ms",
        env = "DB_STATEMENT_TIMEOUT_MS",
        default_value = "10000",
        value_parser = parse::millis
    )]
    pub statement_timeout: Duration,
    /// The event stream's settings.
    #[command(flatten)]
    pub events: EventsConfig,
}

impl CommonConfig {
    /// Reads the common variables from the environment alone.
    pub fn from_env() -> Result<Self, ConfigError> {
        from_env("common")
    }
}

impl Default for CommonConfig {
    /// The declared defaults, whatever the environment says.
    fn default() -> Self {
        defaults()
    }
}

/// Process-wide variables that [`crate::telemetry`] reads itself; declared
/// here so that `--help` and the README check know them.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = ENV_ONLY_HEADING)]
pub struct TelemetryArgs {
    /// Log format on stderr: `json`, or anything else for compact text [default: json unless stderr is a terminal].
    #[arg(long = "log-format", env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long = "rust-log", env = "RUST_LOG", default_value = crate::telemetry::DEFAULT_FILTER)]
    pub rust_log: String,
    /// OTLP/gRPC collector; traces and metrics are exported only when set.
    #[arg(long = "otel-exporter-otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// Milliseconds between metric exports (read by the OpenTelemetry SDK).
    #[arg(long = "otel-metric-export-interval", env = "OTEL_METRIC_EXPORT_INTERVAL", default_value = "60000")]
    pub otel_metric_export_interval: String,
    /// Service name in traces and metrics [default: the binary's name].
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
}

/// A service's configuration, as [`ServiceArgs`] completes it.
pub trait ServiceConfig {
    /// The service's own database URL (e.g. `BILLING_DATABASE_URL`).
    fn database_url_mut(&mut self) -> &mut Option<Secret>;
}

/// Everything a service binary reads from the environment: its
/// configuration `C` and the variables only the binary uses.
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceArgs<C: clap::Args> {
    /// The service's configuration.
    #[command(flatten)]
    pub config: C,
    /// Database URL used when the service's own variable is unset.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse::secret)]
    pub fallback_database_url: Option<Secret>,
    /// Logs and telemetry, read by [`crate::telemetry`] itself.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl<C: clap::Args + ServiceConfig> ServiceArgs<C> {
    /// The service's configuration, `DATABASE_URL` applied.
    pub fn into_config(self) -> C {
        let mut config = self.config;
        let url = config.database_url_mut();
        *url = url.take().or(self.fallback_database_url);
        config
    }
}

/// The `after_help` of the binaries, under the generated option list.
pub const ENV_NOTE: &str = "Every option is normally given as the environment variable shown beside it \
     (an option on the command line wins). Empty variables count as unset; a bad value stops the \
     process with one line naming the variable. Secrets and tokens are never printed.";

/// The help heading of variables the process reads from the environment
/// itself (logs, telemetry, a development database): [`matches_from`] refuses
/// them as command-line options, and [`env_only_as_variables`] shows them
/// under it as variables, not as options.
pub const ENV_ONLY_HEADING: &str = "Environment only (these are not accepted as options)";

/// A blank variable counts as unset (clap would hand `""` to the parser).
pub fn blank_env_is_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        let blank = a.get_env().is_some_and(|name| std::env::var(name).is_ok_and(|v| v.trim().is_empty()));
        if blank { a.env(clap::builder::Resettable::Reset) } else { a }
    })
    .mut_subcommands(blank_env_is_unset)
}

/// Parses `cmd`'s arguments (and environment) from `args`, with
/// [`blank_env_is_unset`]; a bad value becomes the one-line [`ConfigError`]
/// naming its variable, any other clap error (help, version, unknown flag)
/// is returned as it is.
pub fn matches_from<I, A>(cmd: clap::Command, args: I) -> Result<clap::ArgMatches, Result<ConfigError, clap::Error>>
where
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    let cmd = blank_env_is_unset(env_only_as_variables(cmd));
    let m = cmd.clone().try_get_matches_from(args).map_err(|e| config_error(&cmd, &e).ok_or(e))?;
    for a in cmd.get_arguments().filter(|a| a.get_help_heading() == Some(ENV_ONLY_HEADING)) {
        if m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine) {
            let name = a.get_env().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let value = m.get_raw(a.get_id().as_str()).into_iter().flatten().map(|v| v.to_string_lossy().into_owned()).collect();
            return Err(Ok(ConfigError {
                name,
                value,
                reason: "read from the environment only; set the variable instead".into(),
            }));
        }
    }
    Ok(m)
}

/// The variable behind a clap "invalid value" error, as a [`ConfigError`].
fn config_error(cmd: &clap::Command, err: &clap::Error) -> Option<ConfigError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(err.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let ContextValue::String(arg) = err.get(ContextKind::InvalidArg)? else { return None };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let reason = std::error::Error::source(err).map(|e| e.to_string()).unwrap_or_else(|| "invalid value".into());
    let name = declared_env(cmd).into_iter().find(|d| d.arg == *arg)?.name;
    Some(ConfigError { name, value, reason })
}

/// Reads `T` from the environment alone (no command-line arguments).
pub fn from_env<T: clap::Args + clap::FromArgMatches>(name: &'static str) -> Result<T, ConfigError> {
    let cmd = T::augment_args(clap::Command::new(name).no_binary_name(true));
    let unexpected =
        |e: clap::Error| ConfigError { name: name.into(), value: String::new(), reason: e.to_string().trim().into() };
    let m = matches_from(cmd, std::iter::empty::<String>()).map_err(|e| e.unwrap_or_else(unexpected))?;
    T::from_arg_matches(&m).map_err(unexpected)
}

/// `T` with every declared default, ignoring the environment.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|a| a.env(clap::builder::Resettable::Reset));
    match cmd.try_get_matches_from(std::iter::empty::<String>()).and_then(|m| T::from_arg_matches(&m)) {
        Ok(t) => t,
        // A declared default that does not parse: the unit tests catch it.
        Err(e) => panic!("the declared configuration defaults do not parse: {e}"),
    }
}

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
    fn secret_debug_never_prints_the_secret() {
        let config = (Secret::from("hunter2-key"), vec![Secret::from("tok-1".to_owned())], Secret::default());
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("hunter2") && !printed.contains("tok-1"), "{printed}");
        assert!(printed.contains("Secret(<redacted>)") && printed.contains("Secret(<empty>)"), "{printed}");
        assert_eq!(config.0.expose(), "hunter2-key");
        assert_eq!(Secret::expose_all(&config.1), vec!["tok-1".to_owned()]);
    }

    #[test]
    fn common_defaults_are_the_declared_ones() {
        let d = CommonConfig::default();
        assert_eq!(d.pool_size, 16);
        assert_eq!(d.connect_timeout, Duration::from_millis(1500));
        assert_eq!(d.max_concurrent_requests, 512);
        assert_eq!(d.shutdown_grace, Duration::from_secs(25));
        assert_eq!(d.max_connection_age, Some(Duration::from_secs(300)));
        assert_eq!(d.lock_timeout, Duration::from_millis(1000));
        assert_eq!(d.statement_timeout, Duration::from_millis(10_000));
    }

    #[test]
    fn clap_bad_value_is_one_line_naming_the_variable() {
        use clap::Args;
        let cmd = CommonConfig::augment_args(clap::Command::new("t").no_binary_name(true));
        let err = matches_from(cmd.clone(), ["--db-pool-size", "twelve"]).err().and_then(Result::ok).map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.starts_with("invalid value for DB_POOL_SIZE: \"twelve\" ("), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let m = matches_from(cmd, ["--db-pool-size", " 0 ", "--grpc-max-connection-age-secs", "0"]).ok();
        let c = m.and_then(|m| <CommonConfig as clap::FromArgMatches>::from_arg_matches(&m).ok());
        assert_eq!(c.as_ref().map(|c| c.pool_size), Some(1));
        assert_eq!(c.map(|c| c.max_connection_age), Some(None));
    }

    #[test]
    fn environment_only_variables_are_refused_as_options() {
        use clap::Args;
        let cmd = TelemetryArgs::augment_args(clap::Command::new("t").no_binary_name(true));
        let err = matches_from(cmd.clone(), ["--rust-log", "debug"]).err().and_then(Result::ok).map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("invalid value for RUST_LOG: \"debug\"")));
        assert!(matches_from(cmd, std::iter::empty::<String>()).is_ok());
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
