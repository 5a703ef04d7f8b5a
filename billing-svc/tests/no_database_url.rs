#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Without BILLING_DATABASE_URL (or DATABASE_URL) every database command of
//! the real binary fails at once with one line naming the variable, and never
//! falls back to finding or starting a PostgreSQL of its own (no `target/pg`
//! appears, nothing listens). See docs/design.md, "Development PostgreSQL".
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_billing-svc");

/// Runs `billing-svc <args>` in an empty directory with everything `serve`
/// needs except a database URL; returns the exit status, stderr and how long
/// it took.
fn run_without_url(args: &[&str]) -> (std::process::ExitStatus, String, Duration) {
    let dir = std::env::temp_dir().join(format!("billing-no-url-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(&dir)
        .env_remove("BILLING_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("BILLING_LISTEN_ADDR", "127.0.0.1:0")
        .env("BILLING_AUTH_TOKENS", "t")
        .env("GATEWAY_KEY_SECRET", "k")
        .env("GATEWAY_WEBHOOK_SECRET", "w")
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
    assert!(!dir.join("target").exists(), "billing-svc {args:?} created a PostgreSQL scratch directory");
    let _ = std::fs::remove_dir_all(&dir);
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

fn assert_refused(args: &[&str]) {
    let (status, err, took) = run_without_url(args);
    assert!(!status.success(), "billing-svc {args:?} without a URL succeeded: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.contains("billing-svc:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("BILLING_DATABASE_URL") && lines[0].contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(1), "billing-svc {args:?} took {took:?} to refuse");
}

#[test]
fn serve_without_database_url_exits_at_once_naming_the_variable() {
    assert_refused(&["serve"]);
}

#[test]
fn migrate_without_database_url_exits_at_once_naming_the_variable() {
    assert_refused(&["migrate"]);
}

#[test]
fn other_database_commands_without_database_url_exit_at_once() {
    assert_refused(&["reconcile"]);
    assert_refused(&["jobs", "run-once", "rollover"]);
    assert_refused(&["acknowledge", "--kind", "PAYMENT_DISCREPANCY", "--subject", "x", "--note", "n"]);
}
