//! Secrets never reach a `Debug` output (docs/design.md, "The gateway"):
//! the configurations of both services and checkout's billing client print
//! the database URL and the bearer tokens redacted.
use tests::harness::{Options, billing_config, checkout_config};

const URL: &str = "postgres://billing:pa55-w0rd@db.internal:5432/billing";

#[test]
fn configurations_print_no_database_password_or_token() {
    let mut billing = billing_config(&Options::default());
    billing.database_url = Some(URL.into());
    let mut checkout = checkout_config(&Options::default(), "127.0.0.1:1".parse().unwrap());
    checkout.database_url = Some(URL.into());
    let printed = format!("{billing:?} {billing:#?} {checkout:?} {checkout:#?}");
    assert!(!printed.contains("pa55-w0rd") && !printed.contains("db.internal"), "{printed}");
    for token in billing.auth_tokens.iter().chain(&billing.admin_tokens).chain([&checkout.billing_token]) {
        assert!(!token.is_empty() && !printed.contains(token.expose()), "a token is printed: {printed}");
    }
    // The value itself is still what the service connects with.
    assert_eq!(shared::config::require_database_url(billing.database_url, "BILLING_DATABASE_URL", "billing").unwrap(), URL);
}

#[tokio::test]
async fn checkouts_billing_client_prints_no_token() {
    let client = checkout_svc::billing::Billing::new("http://127.0.0.1:1", "checkout-to-billing-s3cret").unwrap();
    let printed = format!("{client:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
}
