#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Razorpay adapter against a fake Razorpay on 127.0.0.1:0 that checks
//! every request the way the documentation describes it (basic auth, paths,
//! JSON fields, amounts in paise) and answers with the documented shapes:
//! orders (https://razorpay.com/docs/api/orders/create,
//! https://razorpay.com/docs/api/orders/fetch-all), payments
//! (https://razorpay.com/docs/api/payments/fetch-with-id), refunds
//! (https://razorpay.com/docs/api/refunds/create-normal,
//! https://razorpay.com/docs/api/refunds/entity) and recurring payments
//! (https://razorpay.com/docs/api/payments/recurring-payments/cards/create-subsequent-payments),
//! errors as `{"error": {"code": "BAD_REQUEST_ERROR", "description": …}}`.
//! Also failures: 400, 401, 429 with Retry-After, 5xx, slow answers, a
//! create-order that times out and is retried, and VerifyPayment confirming
//! the payment at the gateway before granting anything; CreateOrder naming
//! the gateway and its public key id for the checkout widget.
mod failures;
mod fake;
mod mandates;
mod payments;
mod recurring;
mod refunds;
mod requests;
mod saved_methods;
mod widget;

use std::time::{Duration, Instant};

use billing_svc::{
    Error,
    config::GatewayConfig,
    gateway::{Gateway, GatewayError, NewOrder, PaymentStatus, Razorpay, RefundStatus, Sandbox},
};
use serde_json::json;
use shared::error::ServiceError;

use fake::*;

/// A billing App on a fresh database whose gateway is the fake Razorpay
/// with card mandates on (`RAZORPAY_CARD_MANDATES=true`), and a manual clock.
async fn app_with_fake(base: &str) -> (billing_svc::App, shared::Clock, String, &'static test_support::pg::PgServer) {
    app_with_fake_mandates(base, true).await
}

async fn app_with_fake_mandates(
    base: &str,
    card_mandates: bool,
) -> (billing_svc::App, shared::Clock, String, &'static test_support::pg::PgServer) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg");
    let server: &'static test_support::pg::PgServer =
        Box::leak(Box::new(test_support::pg::PgServer::resolve(&root).await.unwrap()));
    let db = format!("razorpay_{}", uuid::Uuid::new_v4().simple());
    server.ensure_database(&db, None).await.unwrap();
    let url = server.url(&db);
    billing_svc::app::migrate(&url).await.unwrap();
    let mut cfg = billing_svc::Config::from_env().unwrap();
    cfg.gateway = billing_svc::config::GatewayConfig { card_mandates, ..config(base) };
    cfg.jobs.enabled = false;
    cfg.common.pool_size = 4;
    let clock = shared::Clock::manual(chrono::Utc::now());
    (billing_svc::App::new(cfg, &url, clock.clone()), clock, db, server)
}

/// The customer completes the authorisation payment of `order_id` at
/// Razorpay: a captured card payment that registered `token_id` for the
/// order's customer, with the email and contact the customer entered.
fn customer_pays_and_registers(fake: &fake::Fake, order_id: &str, payment_id: &str, token_id: &str) -> String {
    let order = fake.orders.lock().unwrap().iter().find(|o| o["id"] == order_id).cloned().unwrap();
    let customer = order["customer_id"].as_str().unwrap().to_owned();
    fake.add_token(&customer, token_id, order["token"]["max_amount"].as_i64().unwrap());
    fake.add_payment(payment_id, order_id, order["amount"].as_i64().unwrap(), "INR", "captured");
    let mut payments = fake.payments.lock().unwrap();
    let p = payments.get_mut(payment_id).unwrap();
    p["customer_id"] = json!(customer);
    p["token_id"] = json!(token_id);
    p["recurring"] = json!(true);
    customer
}

async fn scalar(app: &billing_svc::App, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.conn().await.unwrap();
    diesel::sql_query(sql).get_result::<N>(&mut *conn).await.unwrap().n
}

/// Buys basic-monthly for `user` through the fake with a card mandate
/// registered as `token_id` (VerifyPayment stores customer, token, email and
/// contact); returns the subscription and the customer id.
async fn subscribe_with_mandate(
    fake: &fake::Fake,
    app: &billing_svc::App,
    base: &str,
    user: &str,
    payment_id: &str,
    token_id: &str,
) -> (billing_svc::subscriptions::Subscription, String) {
    let order = billing_svc::checkout_orders::create(app, &order_request(user, "basic-monthly")).await.unwrap();
    let customer = customer_pays_and_registers(fake, &order.id, payment_id, token_id);
    let sig = Sandbox::new(config(base)).sign_payment(&order.id, payment_id);
    let captured = billing_svc::payments::verify(app, &order_id(&order.id), payment_id, &sig).await.unwrap();
    assert_eq!(captured.subscription.gateway_token_id.as_deref(), Some(token_id));
    (captured.subscription, customer)
}

/// CreateOrder's checked input for a new checkout session.
fn order_request(user_id: &str, plan_id: &str) -> billing_svc::checkout_orders::OrderRequest {
    billing_svc::checkout_orders::OrderRequest {
        checkout_session_id: uuid::Uuid::new_v4(),
        user_id: shared::ids::UserId::parse(user_id).unwrap(),
        plan_id: shared::ids::PlanId::parse(plan_id).unwrap(),
    }
}

fn order_id(id: &str) -> billing_svc::orders::OrderId {
    billing_svc::orders::OrderId::parse(id).unwrap()
}
