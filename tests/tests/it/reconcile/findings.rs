//! What reconciliation finds and fixes: inconsistent subscriptions, payment
//! discrepancies refunded with a pool of one connection, a foreign payment
//! only reported, and paid orders that checkout does not know.
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, exec, scalar},
    spawn_app,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_finds_each_inconsistency_fixes_it_and_then_finds_nothing() {
    let mut app = spawn_app().await;
    let mut db = app.billing_db().await;
    // 1. A paid order without a subscription.
    let lost = app.order("r-lost", "basic-monthly").await;
    exec(
        &mut db,
        &format!("UPDATE orders SET status = 'PAID', payment_id = 'pay_lost', paid_at = now() WHERE id = '{}'", lost.id),
    )
    .await;
    // 2. A paid-plan subscription without a paid order.
    exec(
        &mut db,
        "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
         VALUES (gen_random_uuid(), 'r-ghost', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)",
    )
    .await;
    // 3. Two subscriptions for one order (only possible without the constraint).
    let dup = app.order("r-dup", "basic-monthly").await;
    let (p, sig) = app.pay(&dup.id);
    app.billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: dup.id.clone(), payment_id: p, signature: sig })
        .await
        .unwrap();
    exec(&mut db, "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_order_id_key").await;
    exec(
        &mut db,
        &format!(
            "INSERT INTO subscriptions (id, user_id, plan_id, order_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining, created_at) \
             SELECT gen_random_uuid(), user_id, plan_id, order_id, 'REPLACED', anchor_at, period_start, period_end, 0, 0, created_at + interval '1 second' \
             FROM subscriptions WHERE order_id = '{}'",
            dup.id
        ),
    )
    .await;
    // 4. A webhook whose amount disagrees with its order.
    let odd = app.order("r-odd", "pro-monthly").await;
    let (p, _) = app.pay(&odd.id);
    app.billing.handle_gateway_webhook(app.captured_webhook(&odd.id, &p, 1, "INR", "evt-odd")).await.unwrap();
    // 5. A balance the ledger does not explain.
    exec(
        &mut db,
        &format!(
            "UPDATE subscriptions SET credits_remaining = credits_remaining - 5 WHERE order_id = '{}' AND status = 'ACTIVE'",
            dup.id
        ),
    )
    .await;
    // 6. A usage session stuck ACTIVE.
    app.billing
        .start_usage_session(bpb::StartUsageSessionRequest {
            user_id: "r-stuck".into(),
            kind: bpb::UsageKind::Call as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    app.clock.advance(Duration::hours(25));

    let check = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    let mut kinds: Vec<String> = check.findings.iter().map(|f| f.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        vec![
            "DUPLICATE_SUBSCRIPTIONS_FOR_ORDER",
            "LEDGER_MISMATCH",
            "PAID_ORDER_WITHOUT_SUBSCRIPTION",
            "PAYMENT_DISCREPANCY",
            "STUCK_USAGE_SESSION",
            "SUBSCRIPTION_WITHOUT_PAID_ORDER",
        ]
    );
    assert_eq!(check.fixed, 0);
    let audit_before = scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit").await;
    assert_eq!(audit_before, 0, "check mode changes nothing");

    // The gateway refuses the refund: everything is repaired except money
    // taken without a subscription, which only a refund or an operator's
    // acknowledgement closes.
    app.gateway.set_refunds(billing_svc::gateway::SandboxRefunds::Refuse);
    let fix = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert!(fix.findings.iter().all(|f| f.fixed == (f.kind != "PAYMENT_DISCREPANCY")), "{:?}", fix.findings);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit").await, fix.fixed);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", lost.id)).await, 1);

    let again = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    let open: Vec<_> = again.findings.iter().map(|f| (f.kind.as_str(), f.fixed)).collect();
    assert_eq!(open, vec![("PAYMENT_DISCREPANCY", false)], "only the payment discrepancy stays open: {:?}", again.findings);
    let subject = again.findings[0].subject_id.clone();
    let acked =
        billing_svc::reconcile::acknowledge(&mut db, "PAYMENT_DISCREPANCY", &subject, "refunded by hand", app.clock.now())
            .await
            .unwrap();
    assert!(acked);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit WHERE note = 'refunded by hand'").await,
        1,
        "the acknowledgement is audited with its note"
    );
    let clean = app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(clean.findings.is_empty(), "clean once acknowledged: {:?}", clean.findings);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_lists_paid_orders_that_checkout_does_not_know() {
    let app = spawn_app().await;
    let kept = app.create_session("known", "basic-monthly").await;
    let lost = app.create_session("lost", "basic-monthly").await;
    for s in [&kept, &lost] {
        let (p, sig) = app.pay(&s.order_id);
        app.complete(&s.id, &p, &sig).await.unwrap();
    }
    let mut db = app.checkout_db().await;
    tests::helpers::exec(&mut db, &format!("DELETE FROM checkout_sessions WHERE id = '{}'", lost.id)).await;
    let since = app.clock.now() - Duration::days(30);
    let found = billing_svc::cross_check::paid_orders_unknown_to_checkout(
        &app.billing_app.pool,
        &format!("http://{}", app.checkout_addr),
        tests::harness::SERVICE_TOKEN,
        since,
        100,
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].kind.as_str(), found[0].subject_id.as_str()),
        ("PAID_ORDER_UNKNOWN_TO_CHECKOUT", lost.order_id.as_str())
    );
}
