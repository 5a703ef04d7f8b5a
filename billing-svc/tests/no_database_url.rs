//! billing-svc without BILLING_DATABASE_URL (or DATABASE_URL): every
//! database command refuses at once (`test_support::no_database_url`).
use test_support::no_database_url::{Binary, assert_refused};

const BIN: Binary = Binary {
    path: env!("CARGO_BIN_EXE_billing-svc"),
    name: "billing-svc",
    url_var: "BILLING_DATABASE_URL",
    serve_env: &[
        ("BILLING_LISTEN_ADDR", "127.0.0.1:0"),
        ("BILLING_AUTH_TOKENS", "t"),
        ("GATEWAY_KEY_SECRET", "k"),
        ("GATEWAY_WEBHOOK_SECRET", "w"),
    ],
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
    assert_refused(&BIN, &["reconcile"]);
    assert_refused(&BIN, &["jobs", "run-once", "rollover"]);
    assert_refused(&BIN, &["acknowledge", "--kind", "PAYMENT_DISCREPANCY", "--subject", "x", "--note", "n"]);
}
