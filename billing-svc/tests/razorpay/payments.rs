//! Payments confirmed at Razorpay before anything is granted, and late
//! authorizations captured (or refused) through the capture API.
use super::*;

/// VerifyPayment with `GATEWAY=razorpay`: the payment is confirmed at the
/// gateway (its order, its status, its amount) before anything is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_payment_confirms_the_payment_at_razorpay() {
    let (fake, base) = start_fake().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg");
    let server = test_support::pg::PgServer::resolve(&root).await.unwrap();
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
        billing_svc::payments::verify(&app, &super::order_id(order_id), payment_id, &sig).await
    };
    let kind = |r: Result<billing_svc::payments::Captured, Error>| match r {
        Err(Error::Service(ServiceError::FailedPrecondition { reason, .. })) => reason.as_str_name(),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    };

    let order = billing_svc::checkout_orders::create(&app, &order_request("user-razorpay", "basic-monthly")).await.unwrap();
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
    let order = billing_svc::checkout_orders::create(&app, &order_request("user-late-auth", "basic-monthly")).await.unwrap();
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
    let order = billing_svc::checkout_orders::create(&app, &order_request("user-late-auth-2", "basic-monthly")).await.unwrap();
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
