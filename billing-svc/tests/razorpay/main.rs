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
//! the payment at the gateway before granting anything.
mod fake;
mod refunds;

use std::time::{Duration, Instant};

use billing_svc::{
    Error,
    config::GatewayConfig,
    gateway::{Gateway, GatewayError, NewOrder, PaymentStatus, Razorpay, RefundStatus, Sandbox},
};
use serde_json::json;
use shared::error::ServiceError;

use fake::*;

#[tokio::test]
async fn create_order_posts_the_documented_request() {
    let (fake, gw) = razorpay().await;
    let order = gw.create_order(&new_order("sess-0001")).await.unwrap();
    assert!(order.id.starts_with("order_"), "{order:?}");

    // First the look-up by receipt, then one create.
    let lookups = fake.seen("GET", "/v1/orders");
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].query, "receipt=sess-0001");
    let posts = fake.seen("POST", "/v1/orders");
    assert_eq!(posts.len(), 1);
    let p = &posts[0];
    assert_eq!(p.authorization.as_deref(), Some(expected_authorization().as_str()));
    assert_eq!(p.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(p.body["amount"], 49_900, "amount in paise, as an integer");
    assert_eq!(p.body["currency"], "INR");
    assert_eq!(p.body["receipt"], "sess-0001");
    assert_eq!(p.body["notes"]["user_id"], "user-7");
    assert_eq!(p.body["notes"]["plan_id"], "basic-monthly");
    assert_eq!(fake.orders_with_receipt("sess-0001")[0]["id"], order.id.as_str());
}

#[tokio::test]
async fn create_order_reuses_the_order_carrying_the_receipt() {
    let (fake, gw) = razorpay().await;
    let first = gw.create_order(&new_order("sess-0002")).await.unwrap();
    let again = gw.create_order(&new_order("sess-0002")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1);
    assert_eq!(fake.orders_with_receipt("sess-0002").len(), 1);

    // An order with the receipt but another amount is not ours to reuse.
    let other = gw.create_order(&NewOrder { amount_minor: 149_900, ..new_order("sess-0002") }).await.unwrap();
    assert_ne!(other, first);
}

#[tokio::test]
async fn create_order_timed_out_after_reaching_razorpay_is_found_not_created_twice() {
    let (fake, gw) = razorpay().await;
    // The create is done at Razorpay, but its answer comes after our timeout.
    fake.script("POST /v1/orders", Script::Slow(Duration::from_secs(2)));
    let order = gw.create_order(&new_order("sess-0003")).await.unwrap();
    let at_razorpay = fake.orders_with_receipt("sess-0003");
    assert_eq!(at_razorpay.len(), 1, "exactly one order for the receipt: {at_razorpay:?}");
    assert_eq!(at_razorpay[0]["id"], order.id.as_str());
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1, "found by receipt, not created again");
}

#[tokio::test]
async fn create_order_timed_out_before_reaching_razorpay_is_created_once_on_retry() {
    let (fake, gw) = razorpay().await;
    fake.script("POST /v1/orders", Script::Stall(Duration::from_secs(2)));
    let order = gw.create_order(&new_order("sess-0004")).await.unwrap();
    let at_razorpay = fake.orders_with_receipt("sess-0004");
    assert_eq!(at_razorpay.len(), 1, "{at_razorpay:?}");
    assert_eq!(at_razorpay[0]["id"], order.id.as_str());
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 2);
}

#[tokio::test]
async fn create_order_that_keeps_timing_out_is_unavailable_with_no_duplicate() {
    let (fake, gw) = razorpay().await;
    for _ in 0..5 {
        fake.script("POST /v1/orders", Script::Stall(Duration::from_secs(2)));
    }
    let started = Instant::now();
    let (message, _) = unavailable(gw.create_order(&new_order("sess-0005")).await);
    assert!(message.contains("timed out"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded: {:?}", started.elapsed());
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 2, "bounded attempts");
    assert!(fake.orders_with_receipt("sess-0005").is_empty());
}

#[tokio::test]
async fn fetch_payment_reads_the_payment_entity() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_29QQoUBi66xm2f", "order_9A33XWu170gUtm", 49_900, "INR", "captured");
    fake.add_payment("pay_DG4ZdRK8ZnXC3k", "order_9A33XWu170gUtm", 49_900, "INR", "authorized");
    let p = gw.fetch_payment("pay_29QQoUBi66xm2f").await.unwrap().unwrap();
    assert_eq!(p.id, "pay_29QQoUBi66xm2f");
    assert_eq!(p.order_id.as_deref(), Some("order_9A33XWu170gUtm"));
    assert_eq!((p.status, p.amount_minor, p.currency.as_str()), (PaymentStatus::Captured, 49_900, "INR"));
    let a = gw.fetch_payment("pay_DG4ZdRK8ZnXC3k").await.unwrap().unwrap();
    assert_eq!(a.status, PaymentStatus::Authorized);

    let gets = fake.seen("GET", "/v1/payments/pay_29QQoUBi66xm2f");
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].authorization.as_deref(), Some(expected_authorization().as_str()));

    // Razorpay answers 400 for an id it does not know.
    let (code, message) = refused(gw.fetch_payment("pay_Unknown000001").await);
    assert_eq!((code.as_str(), message.as_str()), ("BAD_REQUEST_ERROR", "The id provided does not exist"));
}

#[tokio::test]
async fn ids_that_are_not_plain_never_reach_razorpay() {
    let (fake, gw) = razorpay().await;
    for bad in ["../orders", "pay_1/refund", "pay_1?count=100", ""] {
        refused(gw.fetch_payment(bad).await);
        refused(gw.refund(bad, 100, "refund-key-0001").await);
    }
    assert!(fake.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bad_request_is_refused_with_razorpay_code_and_a_bounded_description() {
    let (fake, gw) = razorpay().await;
    let long = "x".repeat(5000);
    fake.script("GET /v1/payments/pay_Long00000001", Script::Answer(400, None, error_body(&long).to_string()));
    let (code, message) = refused(gw.fetch_payment("pay_Long00000001").await);
    assert_eq!(code, "BAD_REQUEST_ERROR");
    assert!(message.chars().count() <= 200, "{} chars", message.chars().count());

    // The documented validation error, through create order.
    let (code, message) = refused(gw.create_order(&NewOrder { amount_minor: 50, ..new_order("sess-0006") }).await);
    assert_eq!((code.as_str(), message.as_str()), ("BAD_REQUEST_ERROR", "The amount must be at least INR 1.00"));
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1, "a refusal is not retried");

    // A 4xx without Razorpay's error shape is still a refusal, not a panic.
    fake.script("GET /v1/payments/pay_Html00000001", Script::Answer(404, None, "<html>not found</html>".into()));
    let (code, _) = refused(gw.fetch_payment("pay_Html00000001").await);
    assert_eq!(code, "HTTP_404");
}

#[tokio::test]
async fn wrong_credentials_are_refused_401() {
    let (fake, base) = start_fake().await;
    let gw = Razorpay::new(GatewayConfig { key_secret: "not-the-secret".into(), ..config(&base) });
    let (code, message) = refused(gw.create_order(&new_order("sess-0007")).await);
    assert_eq!((code.as_str(), message.as_str()), ("BAD_REQUEST_ERROR", "Authentication failed"));
    assert!(fake.orders.lock().unwrap().is_empty());
    assert_eq!(fake.seen.lock().unwrap().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn rate_limited_calls_honour_retry_after_and_are_not_hammered() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Throttled001", "order_1", 100, "INR", "captured");
    let too_many = error_body("Too many requests").to_string();
    fake.script("GET /v1/payments/pay_Throttled001", Script::Answer(429, Some("7"), too_many.clone()));
    let (_, retry_after) = unavailable(gw.fetch_payment("pay_Throttled001").await);
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert_eq!(fake.seen("GET", "/v1/payments/pay_Throttled001").len(), 1);

    // Without Retry-After, callers still get a pause.
    fake.script("GET /v1/payments/pay_Throttled001", Script::Answer(429, None, too_many.clone()));
    let (_, retry_after) = unavailable(gw.fetch_payment("pay_Throttled001").await);
    assert!(retry_after.is_some());

    // A throttled create is neither retried nor leaves an order.
    fake.script("POST /v1/orders", Script::Answer(429, Some("3"), too_many));
    let (_, retry_after) = unavailable(gw.create_order(&new_order("sess-0008")).await);
    assert_eq!(retry_after, Some(Duration::from_secs(3)));
    assert_eq!(fake.seen("POST", "/v1/orders").len(), 1);
    assert!(fake.orders_with_receipt("sess-0008").is_empty());
}

#[tokio::test]
async fn server_errors_are_unavailable_reads_retried_writes_not() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Flaky0000001", "order_1", 100, "INR", "captured");
    let oops = json!({"error": {"code": "SERVER_ERROR", "description": "The server encountered an error."}}).to_string();

    // One 502: the read is retried and succeeds.
    fake.script("GET /v1/payments/pay_Flaky0000001", Script::Answer(502, None, "bad gateway".into()));
    assert!(gw.fetch_payment("pay_Flaky0000001").await.unwrap().is_some());
    assert_eq!(fake.seen("GET", "/v1/payments/pay_Flaky0000001").len(), 2);

    // Failing every time: bounded, then UNAVAILABLE.
    for _ in 0..5 {
        fake.script("GET /v1/payments/pay_Flaky0000001", Script::Answer(500, None, oops.clone()));
    }
    let (message, _) = unavailable(gw.fetch_payment("pay_Flaky0000001").await);
    assert!(message.contains("500"), "{message}");
    assert_eq!(fake.seen("GET", "/v1/payments/pay_Flaky0000001").len(), 4);

    // A refund is a write: one attempt, UNAVAILABLE, the caller retries.
    fake.script("POST /v1/payments/pay_Flaky0000001/refund", Script::Answer(503, Some("2"), oops));
    let (_, retry_after) = unavailable(gw.refund("pay_Flaky0000001", 100, "refund-key-0002").await);
    assert_eq!(retry_after, Some(Duration::from_secs(2)));
    assert_eq!(fake.seen("POST", "/v1/payments/pay_Flaky0000001/refund").len(), 1);
}

#[tokio::test]
async fn slow_answers_time_out_as_unavailable() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Slow00000001", "order_1", 100, "INR", "captured");
    for _ in 0..2 {
        fake.script("GET /v1/payments/pay_Slow00000001", Script::Stall(Duration::from_secs(3)));
    }
    let started = Instant::now();
    let (message, retry_after) = unavailable(gw.fetch_payment("pay_Slow00000001").await);
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(retry_after, None);
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout bounds the call: {:?}", started.elapsed());

    fake.add_payment("pay_Slow00000002", "order_1", 100, "INR", "captured");
    fake.script("POST /v1/payments/pay_Slow00000002/refund", Script::Slow(Duration::from_secs(3)));
    let (message, _) = unavailable(gw.refund("pay_Slow00000002", 100, "refund-key-0003").await);
    assert!(message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn unexpected_bodies_are_unavailable_not_a_panic() {
    let (fake, gw) = razorpay().await;
    for body in ["<html>maintenance</html>", "{\"id\": 42}", "", "[]"] {
        fake.script("GET /v1/payments/pay_Weird0000001", Script::Answer(200, None, body.into()));
        fake.script("GET /v1/payments/pay_Weird0000001", Script::Answer(200, None, body.into()));
        let (message, _) = unavailable(gw.fetch_payment("pay_Weird0000001").await);
        assert!(message.contains("unexpected response"), "{body}: {message}");
    }
    // A create answered with an unreadable 2xx: looked up by receipt before
    // the retry, so there is exactly one order either way.
    fake.script("POST /v1/orders", Script::Answer(200, None, "{\"entity\": \"order\"}".into()));
    let order = gw.create_order(&new_order("sess-0010")).await.unwrap();
    let at_razorpay = fake.orders_with_receipt("sess-0010");
    assert_eq!(at_razorpay.len(), 1);
    assert_eq!(at_razorpay[0]["id"], order.id.as_str());
    assert_eq!(fake.seen("GET", "/v1/orders").len(), 2, "looked up before the first and the second attempt");
}

#[tokio::test]
async fn refund_sends_amount_receipt_notes_and_idempotency_key() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_Refund000001", "order_1", 49_900, "INR", "captured");
    let r = gw.refund("pay_Refund000001", 10_000, "refund-7f3a9c").await.unwrap();
    assert!(r.id.starts_with("rfnd_"), "{r:?}");
    assert_eq!((r.status, r.amount_minor), (RefundStatus::Processed, 10_000));

    let posts = fake.seen("POST", "/v1/payments/pay_Refund000001/refund");
    assert_eq!(posts.len(), 1);
    let p = &posts[0];
    assert_eq!(p.authorization.as_deref(), Some(expected_authorization().as_str()));
    assert_eq!(p.body["amount"], 10_000, "partial refund in paise");
    assert_eq!(p.body["speed"], "normal");
    assert_eq!(p.body["receipt"], "refund-7f3a9c");
    assert_eq!(p.body["notes"]["refund_key"], "refund-7f3a9c");
    // Met the earlier releases' key rule: sent as it is (rolling deploys).
    assert_eq!(p.headers.get("x-refund-idempotency").unwrap(), "refund-7f3a9c");

    *fake.refund_status.lock().unwrap() = Some("pending");
    let pending = gw.refund("pay_Refund000001", 39_900, "refund-8b1c2d").await.unwrap();
    assert_eq!(pending.status, RefundStatus::Pending);

    let (code, _) = refused(gw.refund("pay_Refund000001", 99_999_999, "refund-9d2e3f").await);
    assert_eq!(code, "BAD_REQUEST_ERROR");
}

#[tokio::test]
async fn charge_saved_method_creates_a_recurring_payment() {
    let (fake, gw) = razorpay().await;
    fake.add_token("cust_4xbQrmEoA5WJ0G", "token_4lsdksD31GaZ09", 49_900);
    let order = gw.create_order(&new_order("renew-0001")).await.unwrap();
    let p = gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0001").await.unwrap();
    assert!(p.id.starts_with("pay_"), "{p:?}");
    assert_eq!(p.status, PaymentStatus::Captured);
    assert_eq!((p.amount_minor, p.currency.as_str(), p.order_id.as_deref()), (49_900, "INR", Some(order.id.as_str())));

    let posts = fake.seen("POST", "/v1/payments/create/recurring");
    assert_eq!(posts.len(), 1);
    let b = &posts[0].body;
    assert_eq!(posts[0].authorization.as_deref(), Some(expected_authorization().as_str()));
    assert_eq!(b["amount"], 49_900);
    assert_eq!(b["currency"], "INR");
    assert_eq!(b["order_id"], order.id.as_str());
    assert_eq!(b["customer_id"], "cust_4xbQrmEoA5WJ0G");
    assert_eq!(b["token"], "token_4lsdksD31GaZ09");
    assert_eq!(b["recurring"], "1");
    assert_eq!(b["email"], "gaurav.kumar@example.com");
    assert_eq!(b["contact"], "+919000090000");
    assert_eq!(b["notes"]["receipt"], "renew-0001");
    // Its state is read back from the payment.
    assert_eq!(fake.seen("GET", &format!("/v1/payments/{}", p.id)).len(), 1);

    // A declined card: Razorpay's BAD_REQUEST_ERROR, not retried.
    let declined =
        error_body("Your payment could not be completed as this business accepts domestic (Indian) card payments only.");
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.to_string()));
    let (code, _) = refused(gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0001").await);
    assert_eq!(code, "BAD_REQUEST_ERROR");
    assert_eq!(fake.seen("POST", "/v1/payments/create/recurring").len(), 2);
}

#[tokio::test]
async fn signatures_use_the_same_formulas_as_the_sandbox() {
    let (_fake, gw) = razorpay().await;
    let sandbox = Sandbox::new(config("http://unused"));
    let sig = sandbox.sign_payment("order_9A33XWu170gUtm", "pay_29QQoUBi66xm2f");
    assert!(gw.payment_signature_valid("order_9A33XWu170gUtm", "pay_29QQoUBi66xm2f", &sig));
    assert!(!gw.payment_signature_valid("order_other", "pay_29QQoUBi66xm2f", &sig));
    let body = Sandbox::captured_event_body("order_9A33XWu170gUtm", "pay_29QQoUBi66xm2f", 49_900, "INR");
    let sig = sandbox.sign_webhook(&body);
    assert!(gw.webhook_signature_valid(&body, &sig));
    assert!(!gw.webhook_signature_valid(b"{}", &sig));
    assert_eq!(gw.key_id(), KEY_ID);
}

#[tokio::test]
async fn debug_output_never_contains_a_secret() {
    let (_fake, gw) = razorpay().await;
    let cfg = config("http://127.0.0.1:9");
    for shown in [
        format!("{gw:?}"),
        format!("{gw:#?}"),
        format!("{cfg:?}"),
        format!("{:?}", Sandbox::new(cfg.clone())),
        format!("{:?}", billing_svc::gateway::GatewayError::Unavailable { message: "x".into(), retry_after: None }),
    ] {
        assert!(!shown.contains(KEY_SECRET) && !shown.contains(WEBHOOK_SECRET), "{shown}");
    }
    assert!(format!("{gw:?}").contains(KEY_ID), "the key id is public and helps operators");
}

/// VerifyPayment with `GATEWAY=razorpay`: the payment is confirmed at the
/// gateway (its order, its status, its amount) before anything is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_payment_confirms_the_payment_at_razorpay() {
    let (fake, base) = start_fake().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg");
    let server = shared::pg::PgServer::resolve(&root).await.unwrap();
    let db = format!("razorpay_{}", uuid::Uuid::new_v4().simple());
    server.ensure_database(&db, None).await.unwrap();
    let url = server.url(&db);
    billing_svc::app::migrate(&url).await.unwrap();
    // The defaults, whatever else the configuration grows; the gateway is
    // the fake Razorpay.
    let mut cfg = billing_svc::Config::from_env().unwrap();
    cfg.gateway = config(&base);
    cfg.jobs.enabled = false;
    cfg.common.pool_size = 4;
    let app = billing_svc::App::new(cfg, &url, shared::Clock::system());
    let signer = Sandbox::new(config(&base));
    let verify = async |order_id: &str, payment_id: &str| {
        let sig = signer.sign_payment(order_id, payment_id);
        billing_svc::payments::verify(&app, order_id, payment_id, &sig).await
    };
    let kind = |r: Result<billing_svc::payments::Captured, Error>| match r {
        Err(Error::Service(ServiceError::FailedPrecondition { kind, .. })) => kind,
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    };

    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-razorpay", "basic-monthly").await.unwrap();
    assert!(order.id.starts_with("order_Fk"), "the order id comes from Razorpay: {}", order.id);
    assert_eq!(fake.orders.lock().unwrap().len(), 1);

    // Authorized, not captured: nothing granted, verify again later.
    fake.add_payment("pay_Authorized01", &order.id, 49_900, "INR", "authorized");
    assert_eq!(kind(verify(&order.id, "pay_Authorized01").await), "PAYMENT_NOT_CAPTURED");
    // Captured, but on another order.
    fake.add_payment("pay_OtherOrder01", "order_SomeoneElse", 49_900, "INR", "captured");
    assert_eq!(kind(verify(&order.id, "pay_OtherOrder01").await), "PAYMENT_ORDER_MISMATCH");
    // Captured for less than the order: recorded as a discrepancy.
    fake.add_payment("pay_Short0000001", &order.id, 100, "INR", "captured");
    assert_eq!(kind(verify(&order.id, "pay_Short0000001").await), "AMOUNT_MISMATCH");
    // Razorpay unreachable: UNAVAILABLE, nothing written.
    fake.script("GET /v1/payments/pay_Good00000001", Script::Answer(503, Some("1"), "{}".into()));
    assert!(matches!(verify(&order.id, "pay_Good00000001").await, Err(Error::Gateway(GatewayError::Unavailable { .. }))));
    // Captured for the order's amount: paid, with a subscription.
    fake.add_payment("pay_Good00000001", &order.id, 49_900, "INR", "captured");
    let captured = verify(&order.id, "pay_Good00000001").await.unwrap();
    assert_eq!(captured.order.status, billing_svc::orders::Status::Paid);
    assert_eq!(captured.order.payment_id.as_deref(), Some("pay_Good00000001"));
    assert!(!captured.replayed);
    let again = verify(&order.id, "pay_Good00000001").await.unwrap();
    assert!(again.replayed);

    drop(app);
    server.drop_database(&db).await.unwrap();
    std::mem::forget(server);
}

/// A billing App on a fresh database whose gateway is the fake Razorpay
/// with card mandates on (`RAZORPAY_CARD_MANDATES=true`), and a manual clock.
async fn app_with_fake(base: &str) -> (billing_svc::App, shared::Clock, String, &'static shared::pg::PgServer) {
    app_with_fake_mandates(base, true).await
}

async fn app_with_fake_mandates(
    base: &str,
    card_mandates: bool,
) -> (billing_svc::App, shared::Clock, String, &'static shared::pg::PgServer) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg");
    let server: &'static shared::pg::PgServer = Box::leak(Box::new(shared::pg::PgServer::resolve(&root).await.unwrap()));
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

/// Razorpay's documented recurring flow for cards, end to end against the
/// fake: the purchase creates a customer (`fail_existing: "0"`) and an
/// authorisation order carrying the mandate's token block; the payment's
/// customer, token, email and contact are stored; the renewal creates a new
/// order and a recurring payment that sends email, contact, customer and
/// token. A recurring call that times out after reaching Razorpay is found
/// through the order's payments before a second one is made (one payment),
/// and a renewal above the mandate's maximum is never attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_cards_follow_razorpays_documented_flow() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let signer = Sandbox::new(config(&base));

    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-recurring", "basic-monthly").await.unwrap();
    let customers = fake.seen("POST", "/v1/customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].body["fail_existing"], "0", "as documented; it matches on email and contact, never sent");
    let posted = &fake.seen("POST", "/v1/orders")[0].body;
    assert_eq!(posted["method"], "card");
    assert!(posted["customer_id"].as_str().unwrap().starts_with("cust_"));
    assert_eq!(posted["token"]["max_amount"], 49_900, "the mandate allows the price the customer agreed to");
    assert_eq!(posted["token"]["frequency"], "monthly");
    assert!(posted["token"]["expire_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());

    let customer = customer_pays_and_registers(&fake, &order.id, "pay_Register0001", "token_Mandate00001");
    let sig = signer.sign_payment(&order.id, "pay_Register0001");
    let captured = billing_svc::payments::verify(&app, &order.id, "pay_Register0001", &sig).await.unwrap();
    let sub = captured.subscription;
    assert_eq!(
        (sub.gateway_customer_id.as_deref(), sub.gateway_token_id.as_deref()),
        (Some(customer.as_str()), Some("token_Mandate00001"))
    );
    assert_eq!(
        (sub.gateway_email.as_deref(), sub.gateway_contact.as_deref(), sub.mandate_max_amount_minor),
        (Some("gaurav.kumar@example.com"), Some("+919000090000"), Some(49_900)),
        "what a later charge needs, from the payment entity and the order"
    );
    // A second purchase of the user reuses the stored customer.
    billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-recurring", "pro-monthly").await.unwrap();
    assert_eq!(fake.seen("POST", "/v1/customers").len(), 1);

    // Renewal: the recurring call reaches Razorpay, which charges, but the
    // answer is lost (timeout).
    fake.script("POST /v1/payments/create/recurring", Script::Slow(Duration::from_secs(2)));
    clock.set(sub.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let recurring = fake.seen("POST", "/v1/payments/create/recurring");
    assert_eq!(recurring.len(), 1);
    let b = &recurring[0].body;
    let renewal = b["order_id"].as_str().unwrap().to_owned();
    assert_ne!(renewal, order.id, "a new order for every charge");
    assert!(fake.seen("POST", "/v1/orders").last().unwrap().body["token"].is_null(), "a renewal order registers nothing");
    assert_eq!((b["email"].as_str(), b["contact"].as_str()), (Some("gaurav.kumar@example.com"), Some("+919000090000")));
    assert_eq!((b["customer_id"].as_str(), b["token"].as_str()), (Some(customer.as_str()), Some("token_Mandate00001")));
    assert_eq!((b["recurring"].as_str(), b["amount"].as_i64()), (Some("1"), Some(49_900)));
    assert_eq!(fake.payments_of(&renewal).len(), 1, "Razorpay charged");

    // The next attempt finds that payment by the order instead of charging again.
    clock.set(sub.period_end - chrono::Duration::hours(48));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 charges captured"), "{out}");
    assert_eq!(fake.seen("GET", &format!("/v1/orders/{renewal}/payments")).len(), 1);
    assert_eq!(fake.seen("POST", "/v1/payments/create/recurring").len(), 1, "never a second charge");
    assert_eq!(fake.payments_of(&renewal).len(), 1);
    assert_eq!(scalar(&app, &format!("SELECT count(*) AS n FROM orders WHERE id = '{renewal}' AND status = 'PAID'")).await, 1);

    // The price rises above the mandate's maximum: the next renewal is not
    // charged; the customer pays it through a renewal checkout.
    scalar(
        &app,
        "WITH u AS (UPDATE plans SET price_minor = 59900 WHERE id = 'basic-monthly' RETURNING 1) SELECT count(*) AS n FROM u",
    )
    .await;
    clock.set(sub.period_end + chrono::Duration::days(28));
    billing_svc::jobs::run_once(&app, "rollover").await.unwrap();
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    assert_eq!(fake.seen("POST", "/v1/payments/create/recurring").len(), 1, "above the mandate: never attempted");
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS n FROM orders WHERE amount_minor = 59900 AND status = 'CREATED' AND next_charge_at IS NULL"
        )
        .await,
        1,
        "left to a renewal checkout"
    );

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// A mandate cancelled at Razorpay: the recurring call's 400 is told apart
/// from a declined debit by asking for the token, and reported as unusable
/// (never retried); a saved method without email or contact never reaches
/// Razorpay at all.
#[tokio::test]
async fn a_cancelled_mandate_is_unusable_not_a_decline() {
    let (fake, gw) = razorpay().await;
    fake.add_token("cust_4xbQrmEoA5WJ0G", "token_4lsdksD31GaZ09", 49_900);
    let order = gw.create_order(&new_order("renew-0002")).await.unwrap();
    fake.set_token_status("token_4lsdksD31GaZ09", "cancelled");
    let (code, _) = refused(gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0002").await);
    assert_eq!(code, billing_svc::gateway::METHOD_UNUSABLE);
    assert_eq!(fake.seen("GET", "/v1/customers/cust_4xbQrmEoA5WJ0G/tokens/token_4lsdksD31GaZ09").len(), 1);
    assert!(fake.payments_of(&order.id).is_empty());

    let no_contact = billing_svc::gateway::SavedMethod { contact: None, ..card() };
    let before = fake.seen.lock().unwrap().len();
    let (code, _) = refused(gw.charge_saved_method(&no_contact, 49_900, "INR", &order.id, "renew-0002").await);
    assert_eq!(code, billing_svc::gateway::METHOD_UNUSABLE);
    assert_eq!(fake.seen.lock().unwrap().len(), before, "not sent: Razorpay requires email and contact");
}

/// A late `payment.authorized` through the Razorpay adapter: billing
/// captures it with `POST /v1/payments/:id/capture` for the order's amount
/// and currency. The first capture is made at Razorpay but its answer is
/// lost (a timeout): the webhook fails retryably and stores nothing; the
/// redelivery's capture is answered "already captured", which the adapter
/// confirms by fetching the payment: captured once, the order paid once. An
/// authorization the order cannot take (a second payment) is never sent to
/// the capture API. (docs/design.md, Invariants 28.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_authorization_is_captured_once_through_the_capture_api() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let signer = Sandbox::new(config(&base));
    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-late-auth", "basic-monthly").await.unwrap();
    fake.add_payment("pay_LateAuth00001", &order.id, order.amount_minor, "INR", "authorized");
    let body = Sandbox::authorized_event_body(&order.id, "pay_LateAuth00001", order.amount_minor, "INR");
    let sig = signer.sign_webhook(&body);

    fake.script("POST /v1/payments/pay_LateAuth00001/capture", Script::Slow(Duration::from_secs(3)));
    match billing_svc::webhooks::handle(&app, &body, &sig, "evt_LateAuth0001").await {
        Err(Error::Gateway(GatewayError::Unavailable { .. })) => {}
        other => panic!("expected a retryable failure, got {other:?}"),
    }
    assert_eq!(scalar(&app, "SELECT count(*) AS n FROM webhook_events").await, 0, "stored nothing: redelivered");
    assert_eq!(fake.payments.lock().unwrap()["pay_LateAuth00001"]["status"], "captured", "the lost call captured it");

    let out = billing_svc::webhooks::handle(&app, &body, &sig, "evt_LateAuth0001").await.unwrap();
    assert_eq!(out.outcome, billing_svc::webhooks::EventOutcome::Processed);
    let posts = fake.seen("POST", "/v1/payments/pay_LateAuth00001/capture");
    assert_eq!(posts.len(), 2, "the retry met \"already captured\"");
    assert!(posts.iter().all(|p| p.body["amount"] == order.amount_minor && p.body["currency"] == "INR"));
    let paid = format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND payment_id = 'pay_LateAuth00001'", order.id);
    assert_eq!(scalar(&app, &paid).await, 1);

    fake.add_payment("pay_LateAuth00002", &order.id, order.amount_minor, "INR", "authorized");
    let body = Sandbox::authorized_event_body(&order.id, "pay_LateAuth00002", order.amount_minor, "INR");
    let out = billing_svc::webhooks::handle(&app, &body, &signer.sign_webhook(&body), "evt_LateAuth0002").await.unwrap();
    assert_eq!(out.outcome, billing_svc::webhooks::EventOutcome::Rejected);
    assert!(fake.seen("POST", "/v1/payments/pay_LateAuth00002/capture").is_empty(), "never captured");
    assert_eq!(fake.payments.lock().unwrap()["pay_LateAuth00002"]["status"], "authorized");

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    let kinds: Vec<_> = report.findings.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(kinds, ["WEBHOOK_REJECTED"], "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
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
    let order = billing_svc::orders::create(app, uuid::Uuid::new_v4(), user, "basic-monthly").await.unwrap();
    let customer = customer_pays_and_registers(fake, &order.id, payment_id, token_id);
    let sig = Sandbox::new(config(base)).sign_payment(&order.id, payment_id);
    let captured = billing_svc::payments::verify(app, &order.id, payment_id, &sig).await.unwrap();
    assert_eq!(captured.subscription.gateway_token_id.as_deref(), Some(token_id));
    (captured.subscription, customer)
}

/// docs/design.md, Invariant 29: only Razorpay's own word that a mandate is
/// gone (cancelled, rejected or paused, expired, or the token unknown) makes
/// a saved method unusable. A token check that fails (our key refused with
/// 401, throttled, 5xx) or a mandate in another state keeps the decline as
/// it was; a recurring call refused for our credentials is UNAVAILABLE.
#[tokio::test]
async fn only_a_mandate_razorpay_says_is_gone_is_unusable() {
    let (fake, gw) = razorpay().await;
    let token_path = "/v1/customers/cust_4xbQrmEoA5WJ0G/tokens/token_4lsdksD31GaZ09";
    fake.add_token("cust_4xbQrmEoA5WJ0G", "token_4lsdksD31GaZ09", 49_900);
    let order = gw.create_order(&new_order("renew-0003")).await.unwrap();
    let declined = error_body("Payment failed").to_string();
    let unauthorized = error_body("Authentication failed").to_string();
    let charge = async || gw.charge_saved_method(&card(), 49_900, "INR", &order.id, "renew-0003").await;

    // The token check is refused for our credentials: the decline stays a decline.
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
    fake.script(&format!("GET {token_path}"), Script::Answer(401, None, unauthorized.clone()));
    assert_eq!(refused(charge().await), ("BAD_REQUEST_ERROR".to_owned(), "Payment failed".to_owned()));
    // Throttled, or down: the same.
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
    fake.script(&format!("GET {token_path}"), Script::Answer(429, Some("1"), "{}".into()));
    assert_eq!(refused(charge().await).0, "BAD_REQUEST_ERROR");
    for state in ["initiated", "something_new"] {
        fake.set_token_status("token_4lsdksD31GaZ09", state);
        fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
        assert_eq!(refused(charge().await).0, "BAD_REQUEST_ERROR", "{state}: not known to be gone");
    }
    // The recurring call itself refused for our credentials (a rotated
    // key): UNAVAILABLE, retried on schedule, never "the mandate is gone".
    fake.script("POST /v1/payments/create/recurring", Script::Answer(401, None, unauthorized.clone()));
    let (message, _) = unavailable(charge().await);
    assert!(message.contains("401"), "{message}");
    assert!(fake.payments_of(&order.id).is_empty());

    // What Razorpay says is gone is unusable: paused, expired, unknown (400
    // "does not exist", or 404).
    fake.set_token_status("token_4lsdksD31GaZ09", "paused");
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
    fake.set_token_status("token_4lsdksD31GaZ09", "confirmed");
    fake.tokens.lock().unwrap().get_mut("token_4lsdksD31GaZ09").unwrap()["expired_at"] = json!(1_600_000_000);
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined.clone()));
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
    fake.tokens.lock().unwrap().remove("token_4lsdksD31GaZ09");
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
    fake.script("POST /v1/payments/create/recurring", Script::Answer(400, None, declined));
    fake.script(&format!("GET {token_path}"), Script::Answer(404, None, "<html>not found</html>".into()));
    assert_eq!(refused(charge().await).0, billing_svc::gateway::METHOD_UNUSABLE);
}

/// A key rotated or misconfigured at Razorpay answers 401 to everything:
/// the renewal job keeps every saved method and retries on schedule instead
/// of forgetting the cards in bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_never_forgets_saved_methods() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let (sub, customer) =
        subscribe_with_mandate(&fake, &app, &base, "user-key-401", "pay_KeyRotated001", "token_KeyRotated01").await;
    let unauthorized = error_body("Authentication failed").to_string();
    fake.script("POST /v1/payments/create/recurring", Script::Answer(401, None, unauthorized.clone()));
    let token_path = format!("GET /v1/customers/{customer}/tokens/token_KeyRotated01");
    for _ in 0..2 {
        fake.script(&token_path, Script::Answer(401, None, unauthorized.clone()));
    }
    clock.set(sub.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let kept = billing_svc::subscriptions::get(&mut app.conn().await.unwrap(), sub.id).await.unwrap();
    assert_eq!(kept.gateway_token_id.as_deref(), Some("token_KeyRotated01"), "the saved method is kept");
    assert_eq!(
        scalar(&app, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND next_charge_at IS NOT NULL")
            .await,
        1,
        "charged again on schedule"
    );
    // The key is fixed: the next attempt charges the card.
    clock.set(sub.period_end - chrono::Duration::hours(48));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 charges captured"), "{out}");

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// A subscription saved before email and contact were stored (the columns
/// came NULL): its first renewal reads them from the payment that saved the
/// card (`GET /v1/payments/:id`), stores them and charges, instead of
/// forgetting a working card. Only when that payment has none either is the
/// method unusable and the renewal left to a checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_saved_without_email_or_contact_is_completed_from_its_payment() {
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let (old, _) =
        subscribe_with_mandate(&fake, &app, &base, "user-pre-migration", "pay_PreMigration1", "token_PreMigrate01").await;
    let (bare, _) =
        subscribe_with_mandate(&fake, &app, &base, "user-no-contact", "pay_NoContact0001", "token_NoContact001").await;
    scalar(
        &app,
        "WITH u AS (UPDATE subscriptions SET gateway_email = NULL, gateway_contact = NULL \
          WHERE gateway_token_id IS NOT NULL RETURNING 1) SELECT count(*) AS n FROM u",
    )
    .await;
    // The second one's payment carries no contact at Razorpay either.
    fake.payments.lock().unwrap().get_mut("pay_NoContact0001").unwrap()["contact"] = serde_json::Value::Null;

    clock.set(old.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("2 renewal orders created, 1 charges captured, 1 not captured"), "{out}");
    let recurring = fake.seen("POST", "/v1/payments/create/recurring");
    assert_eq!(recurring.len(), 1, "only the completed method is charged");
    let b = &recurring[0].body;
    assert_eq!(b["token"], "token_PreMigrate01");
    assert_eq!((b["email"].as_str(), b["contact"].as_str()), (Some("gaurav.kumar@example.com"), Some("+919000090000")));
    let mut conn = app.conn().await.unwrap();
    let completed = billing_svc::subscriptions::get(&mut conn, old.id).await.unwrap();
    assert_eq!(
        (completed.gateway_token_id.as_deref(), completed.gateway_email.as_deref(), completed.gateway_contact.as_deref()),
        (Some("token_PreMigrate01"), Some("gaurav.kumar@example.com"), Some("+919000090000")),
        "stored for the next renewals"
    );
    let forgotten = billing_svc::subscriptions::get(&mut conn, bare.id).await.unwrap();
    assert_eq!(forgotten.gateway_token_id, None, "nothing to charge it with: paid through checkout");
    drop(conn);
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND next_charge_at IS NULL", bare.id)
        )
        .await,
        1
    );

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// A purchase order with a token block is a card-mandate authorisation
/// order, which Razorpay's checkout can only pay by card. So mandates are
/// registered only with `RAZORPAY_CARD_MANDATES=true`; by default (false) a
/// purchase is a plain order every payment method can pay (no customer is
/// created), and its renewals are paid through a renewal checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_mandates_are_registered_only_when_configured() {
    let (fake, base) = start_fake().await;
    assert!(!billing_svc::Config::from_env().unwrap().gateway.card_mandates, "off unless configured");
    let (app, clock, db, server) = app_with_fake_mandates(&base, false).await;
    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-upi", "basic-monthly").await.unwrap();
    let posted = &fake.seen("POST", "/v1/orders")[0].body;
    for field in ["method", "token", "customer_id"] {
        assert!(posted[field].is_null(), "a plain order: no {field} in {posted}");
    }
    assert!(fake.seen("POST", "/v1/customers").is_empty(), "no customer without a mandate");
    assert_eq!(order.mandate_max_amount_minor, None);
    // Paid by UPI: a plain captured payment.
    fake.add_payment("pay_UpiPayment001", &order.id, 49_900, "INR", "captured");
    fake.payments.lock().unwrap().get_mut("pay_UpiPayment001").unwrap()["method"] = json!("upi");
    let sig = Sandbox::new(config(&base)).sign_payment(&order.id, "pay_UpiPayment001");
    let sub = billing_svc::payments::verify(&app, &order.id, "pay_UpiPayment001", &sig).await.unwrap().subscription;
    assert_eq!(sub.gateway_token_id, None);
    clock.set(sub.period_end - chrono::Duration::hours(72));
    let out = billing_svc::jobs::run_once(&app, "renewals").await.unwrap();
    assert!(out.contains("1 renewal orders created, 0 charges captured, 0 not captured"), "{out}");
    assert!(fake.seen("POST", "/v1/payments/create/recurring").is_empty());
    assert_eq!(
        scalar(&app, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND next_charge_at IS NULL")
            .await,
        1,
        "the renewal is paid through checkout"
    );
    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    drop(app);
    server.drop_database(&db).await.unwrap();

    // Configured: the purchase registers a card mandate.
    let (app, _clock, db, server) = app_with_fake_mandates(&base, true).await;
    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-card", "basic-monthly").await.unwrap();
    let posted = fake.seen("POST", "/v1/orders").last().unwrap().body.clone();
    assert_eq!(posted["method"], "card");
    assert_eq!(posted["token"]["max_amount"], 49_900);
    assert_eq!(fake.seen("POST", "/v1/customers").len(), 1);
    assert_eq!(order.mandate_max_amount_minor, Some(49_900));
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// Razorpay finds an "existing" customer (`fail_existing: "0"`) by email and
/// contact; billing sends neither, so two users never share a customer, and
/// a customer Razorpay hands back that is not the user's (its
/// `notes.user_key` differs) is never used: the purchase is a plain order
/// and nothing is stored, so one user's saved cards can never be charged
/// for, or shown to, another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_never_shared_between_users() {
    let (fake, base) = start_fake().await;
    let (app, _clock, db, server) = app_with_fake(&base).await;
    let long = "u".repeat(60);
    let (a, b) = (format!("{long}-a"), format!("{long}-b"));
    billing_svc::orders::create(&app, uuid::Uuid::new_v4(), &a, "basic-monthly").await.unwrap();
    billing_svc::orders::create(&app, uuid::Uuid::new_v4(), &b, "basic-monthly").await.unwrap();
    let posts = fake.seen("POST", "/v1/customers");
    assert_eq!(posts.len(), 2);
    for p in &posts {
        assert!(p.body["email"].is_null() && p.body["contact"].is_null(), "nothing Razorpay could match another user on");
    }
    let orders = fake.orders.lock().unwrap().clone();
    assert_ne!(orders[0]["customer_id"], orders[1]["customer_id"], "users whose ids share 50 characters");

    // Razorpay answers with another user's customer: not used, not stored.
    let foreign = fake.customers.lock().unwrap()[0].clone();
    fake.script("POST /v1/customers", Script::Answer(200, None, foreign.to_string()));
    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-c", "basic-monthly").await.unwrap();
    assert_eq!(order.mandate_max_amount_minor, None, "a plain order");
    assert!(fake.seen("POST", "/v1/orders").last().unwrap().body["customer_id"].is_null());
    assert_eq!(scalar(&app, "SELECT count(*) AS n FROM gateway_customers WHERE user_id = 'user-c'").await, 0);
    assert_eq!(scalar(&app, "SELECT count(DISTINCT customer_id) AS n FROM gateway_customers").await, 2);
    drop(app);
    server.drop_database(&db).await.unwrap();
}

/// docs/design.md, Invariants 28: a capture Razorpay refuses is only a
/// refusal once Razorpay's record of the payment says it is not captured.
/// When that look-up fails (5xx on every attempt), the payment may well be
/// captured (an earlier capture whose answer was lost): the adapter answers
/// UNAVAILABLE, never a refusal that would be stored as "not captured".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_capture_whose_payment_cannot_be_read_is_unavailable_not_refused() {
    let (fake, gw) = razorpay().await;
    fake.add_payment("pay_CaptLost0001", "order_CaptLost0001", 49_900, "INR", "captured");
    for _ in 0..2 {
        fake.script("GET /v1/payments/pay_CaptLost0001", Script::Answer(503, None, "unavailable".into()));
    }
    match gw.capture_payment("pay_CaptLost0001", 49_900, "INR").await {
        Err(GatewayError::Unavailable { .. }) => {}
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert_eq!(fake.seen("GET", "/v1/payments/pay_CaptLost0001").len(), 2, "the look-up was tried");
    let again = gw.capture_payment("pay_CaptLost0001", 49_900, "INR").await.unwrap();
    assert_eq!((again.status, again.amount_minor), (PaymentStatus::Captured, 49_900), "already captured: confirmed");

    // Refused, and the look-up says it is not captured: a refusal.
    fake.add_payment("pay_CaptRefused01", "order_CaptRefused01", 49_900, "INR", "authorized");
    match gw.capture_payment("pay_CaptRefused01", 100, "INR").await {
        Err(GatewayError::Refused { code, .. }) => assert_eq!(code, "BAD_REQUEST_ERROR"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// docs/design.md, Invariants 28: before storing a refusal of a late
/// authorization (here: a second payment of a paid order), billing reads
/// the payment at Razorpay. Captured there (an earlier capture, its answer
/// lost), it is a payment discrepancy that reconciliation refunds; when the
/// read fails, the webhook fails retryably and stores nothing; only a
/// payment Razorpay reports as not captured is stored REJECTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_authorization_is_checked_at_razorpay_before_it_is_stored_not_captured() {
    use billing_svc::webhooks::EventOutcome;
    let (fake, base) = start_fake().await;
    let (app, clock, db, server) = app_with_fake(&base).await;
    let signer = Sandbox::new(config(&base));
    let order = billing_svc::orders::create(&app, uuid::Uuid::new_v4(), "user-late-auth-2", "basic-monthly").await.unwrap();
    let deliver = |payment: &str, event: &str| {
        let body = Sandbox::authorized_event_body(&order.id, payment, order.amount_minor, "INR");
        let (app, sig, event) = (&app, signer.sign_webhook(&body), event.to_owned());
        async move { billing_svc::webhooks::handle(app, &body, &sig, &event).await }
    };
    fake.add_payment("pay_LateAuthPaid1", &order.id, order.amount_minor, "INR", "authorized");
    assert_eq!(deliver("pay_LateAuthPaid1", "evt_LatePaid1").await.unwrap().outcome, EventOutcome::Processed);

    fake.add_payment("pay_LateAuthTwice", &order.id, order.amount_minor, "INR", "authorized");
    for _ in 0..2 {
        fake.script("GET /v1/payments/pay_LateAuthTwice", Script::Answer(503, None, "unavailable".into()));
    }
    match deliver("pay_LateAuthTwice", "evt_LateTwice").await {
        Err(Error::Gateway(GatewayError::Unavailable { .. })) => {}
        other => panic!("expected a retryable failure, got {other:?}"),
    }
    assert_eq!(scalar(&app, "SELECT count(*) AS n FROM webhook_events WHERE event_id = 'evt_LateTwice'").await, 0);
    assert_eq!(deliver("pay_LateAuthTwice", "evt_LateTwice").await.unwrap().outcome, EventOutcome::Rejected);

    // Captured at Razorpay already: money billing holds, not "not captured".
    fake.add_payment("pay_LateAuthTaken", &order.id, order.amount_minor, "INR", "captured");
    assert_eq!(deliver("pay_LateAuthTaken", "evt_LateTaken").await.unwrap().outcome, EventOutcome::Discrepancy);
    let second =
        "SELECT count(*) AS n FROM payment_discrepancies WHERE kind = 'SECOND_PAYMENT' AND payment_id = 'pay_LateAuthTaken'";
    assert_eq!(scalar(&app, second).await, 1);
    assert!(fake.seen("POST", "/v1/payments/pay_LateAuthTwice/capture").is_empty(), "never captured");
    assert!(fake.seen("POST", "/v1/payments/pay_LateAuthTaken/capture").is_empty(), "never captured by billing");

    let report = billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), false).await.unwrap();
    let mut kinds: Vec<_> = report.findings.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["PAYMENT_DISCREPANCY", "WEBHOOK_REJECTED"], "{:?}", report.findings);
    for _ in 0..2 {
        billing_svc::reconcile::run(&app, clock.now(), chrono::Duration::hours(24), true).await.unwrap();
    }
    let refunds: Vec<_> = fake.refunds.lock().unwrap().iter().map(|r| (r["payment_id"].clone(), r["amount"].clone())).collect();
    assert_eq!(refunds, [(json!("pay_LateAuthTaken"), json!(order.amount_minor))], "refunded once, only the captured one");
    drop(app);
    server.drop_database(&db).await.unwrap();
}
