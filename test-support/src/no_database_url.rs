//! Without its database URL (or `DATABASE_URL`) every database command of a
//! real service binary fails at once with one line naming the variable, and
//! never falls back to finding or starting a PostgreSQL of its own (no
//! `target/pg` appears, nothing listens). See docs/design.md, "Development
//! PostgreSQL". One check for both services: each service's
//! `tests/no_database_url.rs` names its binary (only a package's own tests
//! learn where Cargo put its binary) and calls [`assert_refused`].
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A service binary and what its `serve` needs besides a database URL.
#[derive(Debug)]
pub struct Binary {
    /// The binary's path (`env!("CARGO_BIN_EXE_<name>")`).
    pub path: &'static str,
    /// Its name, which starts its error lines (`billing-svc: ...`).
    pub name: &'static str,
    /// The service's own database URL variable.
    pub url_var: &'static str,
    /// Everything else `serve` requires (tokens, secrets, a free address).
    pub serve_env: &'static [(&'static str, &'static str)],
}

/// Runs `bin <args>` in an empty directory with everything `serve` needs
/// except a database URL; returns the exit status, stderr and how long it
/// took.
fn run_without_url(bin: &Binary, args: &[&str]) -> (std::process::ExitStatus, String, Duration) {
    let dir = std::env::temp_dir().join(format!("{}-no-url-{}", bin.name, uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin.path)
        .args(args)
        .current_dir(&dir)
        .env_remove(bin.url_var)
        .env_remove("DATABASE_URL")
        .envs(bin.serve_env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Poll rather than wait: a binary that fell back to some PostgreSQL
    // would serve forever, and this test must fail, not hang.
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!dir.join("target").exists(), "{} {args:?} created a PostgreSQL scratch directory", bin.name);
    let _ = std::fs::remove_dir_all(&dir);
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

/// `bin <args>` without a database URL exits non-zero within a second with
/// exactly one error line, which names the service's variable and
/// `DATABASE_URL`, and does not panic.
pub fn assert_refused(bin: &Binary, args: &[&str]) {
    let name = bin.name;
    let (status, err, took) = run_without_url(bin, args);
    assert!(!status.success(), "{name} {args:?} without a URL succeeded: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.contains(&format!("{name}:"))).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(bin.url_var) && lines[0].contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(1), "{name} {args:?} took {took:?} to refuse");
}
