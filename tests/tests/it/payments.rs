//! billing.v1 payments: VerifyPayment and webhooks racing (docs/design.md,
//! Invariants 5), the
//! crash windows, webhook inbox behaviour, and bad input.
use chrono::Duration;
use futures::future::join_all;
use proto::billing::v1 as bpb;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use tests::{
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

/// 100 concurrent deliveries for one order: VerifyPayment retries, webhook
/// redeliveries (same event id) and distinct events, shuffled.
async fn storm(app: &tests::TestApp, seed_value: u64) {
    let user = format!("storm-{seed_value}");
    let order = app.order(&user, "pro-monthly").await;
    let (payment_id, sig) = app.pay(&order.id);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value);
    let mut kinds: Vec<u8> = (0..100).map(|i| (i % 3) as u8).collect();
    kinds.shuffle(&mut rng);
    let futs = kinds.into_iter().enumerate().map(|(i, kind)| {
        let b = app.billing.clone();
        let verify =
            bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: payment_id.clone(), signature: sig.clone() };
        let event = if kind == 1 { "evt-same".to_owned() } else { format!("evt-{seed_value}-{i}-{}", rng.random::<u32>()) };
        let hook = app.captured_webhook(&order.id, &payment_id, order.amount_minor, &order.currency, &event);
        // A delivery refused with ABORTED/UNAVAILABLE (a lock wait or the
        // pool ran past its bound on a loaded machine) is delivered again,
        // as the gateway redelivers and a client retries; every delivery
        // must then succeed.
        tests::helpers::retrying(move || {
            let (mut b, verify, hook) = (b.clone(), verify.clone(), hook.clone());
            async move {
                if kind == 0 {
                    b.verify_payment(verify).await.map(|r| Some(r.into_inner().subscription.unwrap().id))
                } else {
                    b.handle_gateway_webhook(hook).await.map(|r| {
                        let r = r.into_inner();
                        if r.duplicate {
                            None
                        } else {
                            assert_eq!(r.outcome, "PROCESSED");
                            Some(r.subscription_id)
                        }
                    })
                }
            }
        })
    });
    let results = join_all(futs).await;
    let subs: Vec<String> = results.into_iter().filter_map(|r| r.expect("every delivery succeeds")).collect();
    assert!(!subs.is_empty());
    assert!(subs.iter().all(|s| *s == subs[0]), "seed_value {seed_value}: all point at one subscription");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}' AND status = 'ACTIVE'")).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_and_webhook_race_storm_creates_exactly_one_subscription() {
    let app = spawn_app().await;
    for seed_value in [1, 7, 42, 1234] {
        storm(&app, seed_value).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_window_webhook_captures_before_verify_arrives() {
    let mut app = spawn_app().await;
    let s = app.create_session("late", "pro-monthly").await;
    let (p, sig) = app.pay(&s.order_id);
    let hook = app.captured_webhook(&s.order_id, &p, s.amount_minor, &s.currency, "evt-first");
    let h = app.billing.handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(h.outcome, "PROCESSED");
    let v = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: s.order_id.clone(), payment_id: p.clone(), signature: sig.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(v.replayed);
    assert_eq!(v.subscription.unwrap().id, h.subscription_id);
    let done = app.complete(&s.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(done.subscription_id, h.subscription_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_after_the_checkout_session_expired_still_completes() {
    let app = spawn_app().await;
    let s = app.create_session("slowpayer", "basic-monthly").await;
    app.clock.advance(Duration::hours(30));
    let (p, sig) = app.pay(&s.order_id);
    let done = app.complete(&s.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(done.status, proto::checkout::v1::SessionStatus::Completed as i32);
    assert!(!done.subscription_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_duplicates_unknown_events_and_discrepancies() {
    let mut app = spawn_app().await;
    let order = app.order("hooks", "basic-monthly").await;
    let (p, _) = app.pay(&order.id);
    let first = app
        .billing
        .handle_gateway_webhook(app.captured_webhook(&order.id, &p, order.amount_minor, "INR", "e1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    let again = app
        .billing
        .handle_gateway_webhook(app.captured_webhook(&order.id, &p, order.amount_minor, "INR", "e1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.outcome, "PROCESSED");

    let body = br#"{"event":"refund.created","payload":{}}"#.to_vec();
    let unknown = bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: "e2".into() };
    let r = app.billing.handle_gateway_webhook(unknown).await.unwrap().into_inner();
    assert_eq!((r.outcome.as_str(), r.event_type.as_str()), ("IGNORED", "refund.created"));

    // Amount or currency that disagree with the order: recorded, never a
    // subscription for the wrong plan.
    let other = app.order("hooks2", "pro-monthly").await;
    let (p2, _) = app.pay(&other.id);
    let r =
        app.billing.handle_gateway_webhook(app.captured_webhook(&other.id, &p2, 100, "INR", "e3")).await.unwrap().into_inner();
    assert_eq!(r.outcome, "DISCREPANCY");
    let r = app
        .billing
        .handle_gateway_webhook(app.captured_webhook(&other.id, &p2, other.amount_minor, "USD", "e4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "DISCREPANCY");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events").await, 4);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", other.id)).await, 0);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'CREATED'", other.id)).await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_payment_input_gets_precise_statuses_and_writes_nothing() {
    let mut app = spawn_app().await;
    let order = app.order("bad", "basic-monthly").await;
    let (p, sig) = app.pay(&order.id);
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: p.clone(), signature: "00ff".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "BAD_SIGNATURE");
    // The signature is bound to the stored order: another order's id fails.
    let other = app.order("bad2", "basic-monthly").await;
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: other.id.clone(), payment_id: p.clone(), signature: sig.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest {
            order_id: "order_nope".into(),
            payment_id: p.clone(),
            signature: sig.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest {
            order_id: order.id.clone(),
            payment_id: String::new(),
            signature: sig.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let good = app.captured_webhook(&order.id, &p, order.amount_minor, "INR", "evt-bad");
    let mut wrong_sig = good.clone();
    wrong_sig.signature = "ab".repeat(32);
    assert_eq!(app.billing.handle_gateway_webhook(wrong_sig).await.unwrap_err().code(), Code::InvalidArgument);
    let mut no_event = good.clone();
    no_event.event_id = String::new();
    assert_eq!(app.billing.handle_gateway_webhook(no_event).await.unwrap_err().code(), Code::InvalidArgument);
    let junk = b"not json".to_vec();
    let malformed =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&junk), body: junk, event_id: "evt-junk".into() };
    // Validly signed but unreadable: stored and acknowledged as REJECTED (a
    // gateway must not retry it forever), for an operator to review.
    assert_eq!(app.billing.handle_gateway_webhook(malformed).await.unwrap().into_inner().outcome, "REJECTED");
    let huge = vec![b' '; (1 << 20) + 1];
    let oversized =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&huge), body: huge, event_id: "evt-huge".into() };
    let e = app.billing.handle_gateway_webhook(oversized).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.get_error_details().bad_request().unwrap().field_violations[0].field, "body");
    let missing_fields = br#"{"event":"payment.captured","payload":{"payment":{"entity":{"id":"pay_1"}}}}"#.to_vec();
    let partial = bpb::HandleGatewayWebhookRequest {
        signature: app.gateway.sign_webhook(&missing_fields),
        body: missing_fields,
        event_id: "evt-partial".into(),
    };
    assert_eq!(app.billing.handle_gateway_webhook(partial).await.unwrap().into_inner().outcome, "REJECTED");

    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM webhook_events").await,
        2,
        "only the two signed events are stored, both REJECTED; bad signatures and bad envelopes store nothing"
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events WHERE outcome = 'REJECTED'").await, 2);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE order_id IS NOT NULL").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_payment_for_a_paid_order_is_refused_and_recorded() {
    let mut app = spawn_app().await;
    let order = app.order("double", "basic-monthly").await;
    let (p1, s1) = app.pay(&order.id);
    app.billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: p1, signature: s1 })
        .await
        .unwrap();
    let (p2, s2) = app.pay(&order.id);
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: p2, signature: s2 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
    let r = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].kind, "PAYMENT_DISCREPANCY");
}

/// `reconcile --fix` holds no pooled connection across the gateway call of
/// a discrepancy's refund: with a pool of one connection it refunds instead
/// of waiting on itself until the pool times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_fix_refunds_with_a_pool_of_one_connection() {
    let mut app = tests::spawn_app_with(tests::harness::Options { pool_size: 1, ..Default::default() }).await;
    let order = app.order("pool-of-one", "basic-monthly").await;
    for _ in 0..2 {
        let (payment_id, signature) = app.pay(&order.id);
        let _ = app.billing.verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id, signature }).await;
    }
    let fix = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert_eq!(fix.findings.len(), 1, "{:?}", fix.findings);
    assert!(fix.findings[0].kind == "PAYMENT_DISCREPANCY" && fix.findings[0].fixed, "{:?}", fix.findings);
    let again = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(again.findings.is_empty(), "{:?}", again.findings);
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM refunds WHERE discrepancy_id IS NOT NULL AND status = 'PROCESSED'").await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 25: a payment of an order this system never
/// created (another integration on the same gateway account) is reported as
/// FOREIGN_PAYMENT for an operator; `reconcile --fix` never refunds it. The
/// operator's acknowledgement closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_payment_is_reported_never_refunded_by_reconcile_fix() {
    let app = tests::spawn_app().await;
    let hook = app.captured_webhook("order_OtherShop00001", "pay_OtherShop00001", 250_000, "INR", "evt-foreign-1");
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(r.outcome, "DISCREPANCY", "recorded, so a replay stays refused");

    for _ in 0..2 {
        let report =
            app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        let f = &report.findings[0];
        assert_eq!((f.kind_code, f.fixed), (bpb::FindingKind::ForeignPayment as i32, false), "{f:?}");
        assert!(f.detail.contains("did not create"), "{}", f.detail);
    }
    let mut db = app.billing_db().await;
    assert_eq!(tests::helpers::scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 0, "never refunded");
    let subject = app.reconcile(false).await[0].subject_id.clone();
    let closed = billing_svc::reconcile::acknowledge(
        &mut db,
        "FOREIGN_PAYMENT",
        &subject,
        "order of the shop integration, captured there; not ours",
        app.clock.now(),
    )
    .await
    .unwrap();
    assert!(closed);
    let clean =
        app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);
    tests::helpers::assert_ledger_matches_balances(&mut db).await;
}
