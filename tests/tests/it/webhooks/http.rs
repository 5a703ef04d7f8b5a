//! billing's HTTP webhook endpoint, over a real socket, the way a payment
//! gateway reaches it: signed raw bodies, event ids, retries on anything but
//! a 2xx. It shares the capture path with VerifyPayment and the gRPC
//! HandleGatewayWebhook.
use futures::future::join_all;
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, exec, scalar},
    spawn_app,
};

fn url(app: &TestApp) -> String {
    format!("http://{}/webhooks/razorpay", app.billing_http_addr)
}

/// Posts `body` as the gateway does; returns the status and the JSON reply.
async fn post(app: &TestApp, body: &[u8], signature: Option<&str>, event_id: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(url(app)).header("content-type", "application/json").body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("X-Razorpay-Signature", s);
    }
    if let Some(e) = event_id {
        req = req.header("X-Razorpay-Event-Id", e);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn captured(app: &TestApp, order: &bpb::Order, payment_id: &str) -> (Vec<u8>, String) {
    let body = billing_svc::gateway::Sandbox::captured_event_body(&order.id, payment_id, order.amount_minor, &order.currency);
    let sig = app.gateway.sign_webhook(&body);
    (body, sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_webhook_over_http_pays_the_order_once() {
    let app = spawn_app().await;
    let order = app.order("http-1", "basic-monthly").await;
    let (body, sig) = captured(&app, &order, "pay_http1");
    let (status, reply) = post(&app, &body, Some(&sig), Some("evt_http1")).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("PROCESSED")));
    // The gateway retries: a duplicate is acknowledged, not reprocessed.
    let (status, reply) = post(&app, &body, Some(&sig), Some("evt_http1")).await;
    assert_eq!((status, reply["duplicate"].as_bool()), (200, Some(true)));
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);

    let health = reqwest::get(format!("http://{}/healthz", app.billing_http_addr)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_or_oversized_webhooks_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let order = app.order("http-2", "basic-monthly").await;
    let (body, sig) = captured(&app, &order, "pay_http2");
    assert_eq!(post(&app, &body, None, Some("e1")).await.0, 401, "no signature");
    assert_eq!(post(&app, &body, Some(&"ab".repeat(32)), Some("e2")).await.0, 401, "wrong signature");
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(post(&app, &tampered, Some(&sig), Some("e3")).await.0, 401, "signature of another body");
    let huge = vec![b' '; 2 << 20];
    let huge_sig = app.gateway.sign_webhook(&huge);
    assert_eq!(post(&app, &huge, Some(&huge_sig), Some("e4")).await.0, 413, "2 MiB body");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_deliveries_of_one_event_and_a_racing_verify_capture_once() {
    let app = spawn_app().await;
    let order = app.order("http-3", "pro-monthly").await;
    let (payment_id, signature) = app.pay(&order.id);
    let (body, sig) = captured(&app, &order, &payment_id);
    let deliveries = (0..50).map(|_| {
        let (app, body, sig) = (&app, body.clone(), sig.clone());
        async move {
            let (code, reply) = post(app, &body, Some(&sig), Some("evt_storm")).await;
            (code, reply["duplicate"].as_bool())
        }
    });
    let verify = async {
        let mut b = app.billing.clone();
        b.verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: payment_id.clone(), signature })
            .await
            .map(|r| r.into_inner().subscription.unwrap().id)
    };
    let (replies, verified) = tokio::join!(join_all(deliveries), verify);
    // Under contention a delivery may be asked to come back (503, retried by
    // the gateway); none is refused and none fails; exactly one processed it.
    assert!(replies.iter().all(|(c, _)| *c == 200 || *c == 503), "{replies:?}");
    assert_eq!(replies.iter().filter(|r| **r == (200, Some(false))).count(), 1, "{replies:?}");
    let subscription = verified.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events").await, 1, "one inbox row");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{subscription}' AND status = 'ACTIVE'"))
            .await,
        1,
        "VerifyPayment and the webhook agree on the one subscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_but_unusable_content_is_stored_acknowledged_and_flagged() {
    let app = spawn_app().await;
    let order = app.order("http-4", "basic-monthly").await;
    let long = "p".repeat(3000);
    let bodies = [
        format!(
            r#"{{"event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"pay_\u0000x","order_id":"{}","amount":{},"currency":"INR"}}}}}}}}"#,
            order.id, order.amount_minor
        ),
        format!(
            r#"{{"event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"{long}","order_id":"{}","amount":{},"currency":"INR"}}}}}}}}"#,
            order.id, order.amount_minor
        ),
        "{not json".to_owned(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let sig = app.gateway.sign_webhook(body.as_bytes());
        // No event id header: the body's hash names the event.
        let (status, reply) = post(&app, body.as_bytes(), Some(&sig), None).await;
        assert_eq!((status, reply["outcome"].as_str()), (200, Some("REJECTED")), "body {i}");
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM webhook_events WHERE outcome = 'REJECTED' AND event_id LIKE 'sha256:%'").await,
        3
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
    let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert_eq!(r.findings.iter().filter(|f| f.kind == "WEBHOOK_REJECTED" && !f.fixed).count(), 3);
}

/// The whole sandbox flow through HTTP: a checkout session, the customer
/// pays and never comes back, the gateway's webhook arrives over HTTP, and
/// checkout's completion sync completes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_who_never_returns_is_completed_from_the_http_webhook() {
    let app = spawn_app().await;
    let session = app.create_session("http-5", "basic-monthly").await;
    let order = bpb::Order {
        id: session.order_id.clone(),
        amount_minor: session.amount_minor,
        currency: session.currency.clone(),
        ..Default::default()
    };
    let (payment_id, _) = app.pay(&order.id);
    let (body, sig) = captured(&app, &order, &payment_id);
    assert_eq!(post(&app, &body, Some(&sig), Some("evt_gone")).await.0, 200);
    checkout_svc::jobs::run_once(&app.checkout_app, "completion-sync").await.unwrap();
    let s = app.get_session(&session.id).await;
    assert_eq!(s.status, cpb::SessionStatus::Completed as i32, "{s:?}");
    assert!(!s.subscription_id.is_empty());
}

/// SIGTERM-style shutdown while a webhook is in flight (held behind its
/// order's row lock): the endpoint stops taking new deliveries but finishes
/// the one it holds, so the gateway gets its 200 and the order is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_an_in_flight_webhook() {
    let mut app = spawn_app().await;
    let order = app.order("http-6", "basic-monthly").await;
    let (body, sig) = captured(&app, &order, "pay_drain");
    let mut holder = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT id FROM orders WHERE id = '{}' FOR UPDATE", order.id)).await;
    let target = url(&app);
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(target)
            .header("X-Razorpay-Signature", sig)
            .header("X-Razorpay-Event-Id", "evt_drain")
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let mut watcher = app.billing_db().await;
    for _ in 0..500 {
        let waiting = scalar(
            &mut watcher,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let http_addr = app.billing_http_addr;
    let release = async {
        // Shutdown has begun; the held row is released within the lock bound.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let refused = reqwest::Client::new().get(format!("http://{http_addr}/healthz")).send().await;
        exec(&mut holder, "COMMIT").await;
        refused
    };
    let ((), after_stop) = tokio::join!(app.stop_billing(), release);
    assert!(
        after_stop.map(|r| r.status().as_u16() == 503).unwrap_or(true),
        "a draining endpoint takes no new work (connection refused or 503)"
    );
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the in-flight delivery finished");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        1
    );
}

fn authorized(app: &TestApp, order_id: &str, payment_id: &str, amount: i64, currency: &str) -> (Vec<u8>, String) {
    let body = billing_svc::gateway::Sandbox::authorized_event_body(order_id, payment_id, amount, currency);
    let sig = app.gateway.sign_webhook(&body);
    (body, sig)
}

/// docs/design.md, Invariants 28: a late `payment.authorized` (auto-capture
/// off or failed) of an order that can take it is captured through the
/// gateway's capture API and pays the order once; the `payment.captured`
/// the gateway sends afterwards replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_authorization_is_captured_through_the_gateway_and_pays_the_order_once() {
    let app = spawn_app().await;
    let order = app.order("auth-1", "basic-monthly").await;
    let (body, sig) = authorized(&app, &order.id, "pay_auth1", order.amount_minor, &order.currency);
    let (status, reply) = post(&app, &body, Some(&sig), Some("evt_auth1")).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("PROCESSED")), "{reply}");
    assert_eq!(app.gateway.capture_calls(), ["pay_auth1"]);
    let (status, reply) = post(&app, &body, Some(&sig), Some("evt_auth1")).await;
    assert_eq!((status, reply["duplicate"].as_bool()), (200, Some(true)));
    let (body, sig) = captured(&app, &order, "pay_auth1");
    let (status, reply) = post(&app, &body, Some(&sig), Some("evt_auth1_captured")).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("PROCESSED")));
    assert_eq!(app.gateway.capture_calls().len(), 1, "a redelivery and the captured event call no capture");

    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND payment_id = 'pay_auth1'", order.id))
            .await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
    assert!(app.reconcile(false).await.is_empty());
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 28: an authorization the order must not take
/// (a second payment of a paid order, an amount that is not the order's) is
/// never captured and never a payment discrepancy (no money is held, so
/// nothing is to refund): the event is stored REJECTED with why and
/// reconcile reports it to an operator. One of an order this system did not
/// create is left alone (IGNORED).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authorization_the_order_cannot_take_is_not_captured_and_is_flagged() {
    let app = spawn_app().await;
    let paid = app.order("auth-2", "basic-monthly").await;
    let (body, sig) = captured(&app, &paid, "pay_first");
    assert_eq!(post(&app, &body, Some(&sig), Some("evt_first")).await.1["outcome"], "PROCESSED");
    let other = app.order("auth-3", "basic-monthly").await;

    let cases = [
        (authorized(&app, &paid.id, "pay_second", paid.amount_minor, &paid.currency), "REJECTED", "already paid"),
        (authorized(&app, &other.id, "pay_short", other.amount_minor - 1, &other.currency), "REJECTED", "paid"),
        (authorized(&app, "order_NotCreatedHere", "pay_foreign", 100, "INR"), "IGNORED", "left to the integration"),
    ];
    for (i, ((body, sig), outcome, _)) in cases.iter().enumerate() {
        let (status, reply) = post(&app, body, Some(sig), Some(&format!("evt_refused_{i}"))).await;
        assert_eq!((status, reply["outcome"].as_str()), (200, Some(*outcome)), "case {i}: {reply}");
    }
    assert!(app.gateway.capture_calls().is_empty(), "nothing captured: {:?}", app.gateway.capture_calls());

    let mut db = app.billing_db().await;
    for (i, (_, _, why)) in cases.iter().enumerate() {
        let n = scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM webhook_events WHERE event_id = 'evt_refused_{i}' AND detail LIKE '%{why}%'"),
        )
        .await;
        assert_eq!(n, 1, "case {i} says why");
    }
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", other.id)).await,
        0
    );
    // Reported, never "fixed" by a refund: there is nothing to refund.
    for _ in 0..2 {
        let findings = app.reconcile(true).await;
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(findings.iter().all(|f| f.kind == "WEBHOOK_REJECTED" && !f.fixed), "{findings:?}");
    }
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 28: the capture call's answer is lost (made at
/// the gateway, then a timeout): the webhook answers 503 and stores nothing,
/// so the gateway redelivers; concurrent redeliveries capture once (the
/// gateway answers "already captured"), pay the order once, and store the
/// event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_of_unknown_outcome_is_redelivered_and_pays_once() {
    let app = spawn_app().await;
    let order = app.order("auth-4", "pro-monthly").await;
    let (body, sig) = authorized(&app, &order.id, "pay_lost", order.amount_minor, &order.currency);
    app.gateway.set_lose_capture_answers(true);
    let (status, _) = post(&app, &body, Some(&sig), Some("evt_lost")).await;
    assert_eq!(status, 503);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events").await, 0, "nothing stored: retried");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);

    app.gateway.set_lose_capture_answers(false);
    let replies = join_all((0..8).map(|_| post(&app, &body, Some(&sig), Some("evt_lost")))).await;
    assert!(replies.iter().all(|(s, r)| *s == 200 && r["outcome"] == "PROCESSED"), "{replies:?}");
    assert_eq!(replies.iter().filter(|(_, r)| r["duplicate"] == false).count(), 1, "{replies:?}");
    assert!(app.gateway.capture_calls().iter().all(|p| p == "pay_lost"));
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events WHERE event_id = 'evt_lost'").await, 1);
    assert!(app.reconcile(false).await.is_empty());
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 28: billing's capture of a late authorization
/// is made at the gateway but its answer is lost (503, nothing stored);
/// before the redelivery the order is cancelled (CancelOrders). The
/// redelivery must not call that captured money "not captured": billing
/// asks the gateway for the payment before storing any refusal, finds it
/// captured, and records it as an ORDER_CANCELLED discrepancy that
/// `reconcile --fix` refunds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_capture_of_an_order_cancelled_before_the_redelivery_is_refunded_not_called_uncaptured() {
    let app = spawn_app().await;
    let order = app.order("auth-5", "pro-monthly").await;
    let (body, sig) = authorized(&app, &order.id, "pay_lost_cancel", order.amount_minor, &order.currency);
    app.gateway.set_lose_capture_answers(true);
    assert_eq!(post(&app, &body, Some(&sig), Some("evt_lost_cancel")).await.0, 503);
    app.gateway.set_lose_capture_answers(false);
    let cancelled = app
        .billing
        .clone()
        .cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![order.id.clone()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(
        cancelled.iter().map(|o| (o.id.as_str(), o.status)).collect::<Vec<_>>(),
        [(order.id.as_str(), bpb::OrderStatus::Cancelled as i32)]
    );

    let (status, reply) = post(&app, &body, Some(&sig), Some("evt_lost_cancel")).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("DISCREPANCY")), "{reply}");
    let mut db = app.billing_db().await;
    let recorded = format!(
        "SELECT count(*) AS n FROM payment_discrepancies WHERE kind = 'ORDER_CANCELLED' AND payment_id = 'pay_lost_cancel' \
         AND order_id = '{}'",
        order.id
    );
    assert_eq!(scalar(&mut db, &recorded).await, 1);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions").await, 0);

    let found = app.reconcile(false).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found.iter().all(|f| f.kind == "PAYMENT_DISCREPANCY"), "{found:?}");
    let fixed = app.reconcile(true).await;
    assert_eq!(fixed.iter().filter(|f| f.fixed).count(), 1, "{fixed:?}");
    for fix in [false, true] {
        assert!(app.reconcile(fix).await.is_empty(), "nothing left");
    }
    let made = app.gateway.refunds_made("pay_lost_cancel");
    assert_eq!(made.len(), 1, "refunded once: {made:?}");
    assert_eq!(made[0].amount_minor, order.amount_minor);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE status = 'PROCESSED'").await, 1);
    assert_ledger_matches_balances(&mut db).await;
}
