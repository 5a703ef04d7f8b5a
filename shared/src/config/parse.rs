//! Value parsers for the clap declarations of the services' configuration
//! (`#[arg(value_parser = ...)]`). Values are trimmed like [`env_or`](super::env_or) does,
//! and the error text becomes the reason of a [`ConfigError`](super::ConfigError).
use std::{str::FromStr, time::Duration};

use super::Secret;

/// Any `FromStr` value, trimmed.
pub fn trimmed<T>(s: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    s.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// Whole milliseconds.
pub fn millis(s: &str) -> Result<Duration, String> {
    trimmed(s).map(Duration::from_millis)
}

/// Whole seconds.
pub fn secs(s: &str) -> Result<Duration, String> {
    trimmed(s).map(Duration::from_secs)
}

/// Whole seconds, `0` = never.
pub fn secs_or_never(s: &str) -> Result<Option<Duration>, String> {
    trimmed::<u64>(s).map(|n| (n > 0).then(|| Duration::from_secs(n)))
}

/// Whole hours.
pub fn hours(s: &str) -> Result<chrono::Duration, String> {
    trimmed(s).map(chrono::Duration::hours)
}

/// A count of at least one (`0` counts as `1`).
pub fn at_least_one_u32(s: &str) -> Result<u32, String> {
    trimmed::<u32>(s).map(|n| n.max(1))
}

/// A count of at least one (`0` counts as `1`).
pub fn at_least_one_usize(s: &str) -> Result<usize, String> {
    trimmed::<usize>(s).map(|n| n.max(1))
}

/// A secret, taken as it is.
pub fn secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::from(s))
}

/// A secret, trimmed.
pub fn trimmed_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::from(s.trim()))
}

/// Comma-separated secrets; empty entries are dropped.
pub fn secret_list(s: &str) -> Result<Vec<Secret>, String> {
    Ok(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::from).collect())
}
