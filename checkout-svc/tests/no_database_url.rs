//! checkout-svc without CHECKOUT_DATABASE_URL (or DATABASE_URL): every
//! database command refuses at once (`test_support::no_database_url`).
use test_support::no_database_url::{Binary, assert_refused};

const BIN: Binary = Binary {
    path: env!("CARGO_BIN_EXE_checkout-svc"),
    name: "checkout-svc",
    url_var: "CHECKOUT_DATABASE_URL",
    serve_env: &[("CHECKOUT_LISTEN_ADDR", "127.0.0.1:0"), ("CHECKOUT_AUTH_TOKENS", "t"), ("BILLING_TOKEN", "b")],
};

#[test]
fn serve_without_database_url_exits_at_once_naming_the_variable() {
    assert_refused(&BIN, &["serve"]);
}

#[test]
fn migrate_without_database_url_exits_at_once_naming_the_variable() {
    assert_refused(&BIN, &["migrate"]);
}

#[test]
fn other_database_commands_without_database_url_exit_at_once() {
    assert_refused(&BIN, &["jobs", "run-once", "cleanup"]);
    assert_refused(&BIN, &["cleanup", "--dry-run"]);
}
